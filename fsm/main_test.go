package fsm

import (
	"testing"

	"go.uber.org/goleak"
)

// The FSM never starts goroutines; prove it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
