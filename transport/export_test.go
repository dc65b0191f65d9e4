package transport

import "github.com/hodei-io/hodei/proto/hodeiv1"

// LeaseResultHook is the signature of leaseResultHook (api_worker.go).
type LeaseResultHook = func(node string, sh uint32, id string, forwarded bool, leases []*hodeiv1.Lease, err error) ([]*hodeiv1.Lease, error)

// SetLeaseResultHook installs the test-only hook on every lease attempt of
// every node in this process; the returned func removes it.
func SetLeaseResultHook(f LeaseResultHook) (restore func()) {
	leaseResultHook.Store(&f)
	return func() { leaseResultHook.Store(nil) }
}

// MdLeaseNotProposed is the trailer of a forwarded lease that proposed nothing.
const MdLeaseNotProposed = mdLeaseNotProposed
