package logdb

import (
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openTest(t testing.TB, path string, noSync bool) *DB {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "raft.db")
	}
	db, err := Open(Options{Path: path, NoSync: noSync})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}
