package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// cmd100 is a 100-byte command line.
var cmd100 = strings.Repeat("x", 100)

func submitEntry(now int64, n int) *internalpb.Entry {
	specs := make([]*hodeiv1.JobSpec, n)
	for i := range specs {
		specs[i] = &hodeiv1.JobSpec{Tenant: "bench", Command: []string{cmd100}, Shell: true}
	}
	return &internalpb.Entry{Version: EntryVersion, NowMs: now, Commands: []*internalpb.Command{submitCmd(specs...)}}
}

// BenchmarkApplySubmit: one op = one entry with a batch of 64 submits.
func BenchmarkApplySubmit(b *testing.B) {
	f, _ := New(DefaultConfig(), Options{})
	e := submitEntry(1000, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := f.ApplyEntry(uint64(i+1), e); r[0].GetCode() != internalpb.Code_CODE_OK {
			b.Fatal(r[0].GetMessage())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)*64/b.Elapsed().Seconds(), "submits/s")
}

// BenchmarkLeaseComplete: one op = lease 1 job and complete it.
func BenchmarkLeaseComplete(b *testing.B) {
	f, _ := New(DefaultConfig(), Options{})
	idx := uint64(0)
	for n := 0; n < b.N; n += 64 {
		idx++
		f.ApplyEntry(idx, submitEntry(1000, 64))
	}
	lease := &internalpb.Entry{Version: EntryVersion, NowMs: 1000, Commands: []*internalpb.Command{leaseCmd("w", 1)}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx++
		l := f.ApplyEntry(idx, lease)[0].GetLeases()[0]
		idx++
		r := f.ApplyEntry(idx, &internalpb.Entry{Version: EntryVersion, NowMs: 1000, Commands: []*internalpb.Command{
			completeCmd(l.GetJob().GetId(), l.GetToken(), true, false)}})
		if r[0].GetCode() != internalpb.Code_CODE_OK {
			b.Fatal(r[0].GetMessage())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
}

// BenchmarkBytesPerPendingJob reports live heap per PENDING job after 100k
// submits with a 100-byte command (results dropped, as Raft would).
func BenchmarkBytesPerPendingJob(b *testing.B) {
	const jobs = 100_000
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f, _ := New(DefaultConfig(), Options{})
		for n := 0; n < jobs/64+1; n++ {
			f.ApplyEntry(uint64(n+1), submitEntry(1000, 64))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if f.Stats().Ready < jobs {
			b.Fatal("not all submitted")
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(f.Stats().Ready), "B/pending-job")
		runtime.KeepAlive(f)
	}
}

// BenchmarkBytesPerPendingJobWithRequestIDs reports live heap per PENDING job
// when every job comes in its own submit command with its own request id,
// as clients send them: a 32-hex-character id + "/<shard>", a spec of kind
// "k" with a 100-byte payload, about 2,000 submits per second of
// replicated time (one shard's share of 15,000/s over 8 shards), so every
// record is inside the retention window. Results are dropped, as Raft
// would. The request records and the jobs are both counted; rids=false is
// the same without request ids (what the jobs alone cost).
//
//	go test ./fsm/ -run '^$' -bench BytesPerPendingJobWithRequestIDs -benchtime 1x
func BenchmarkBytesPerPendingJobWithRequestIDs(b *testing.B) {
	for _, bc := range []struct {
		jobs int
		rids bool
	}{{100_000, true}, {100_000, false}, {1_000_000, true}, {1_000_000, false}} {
		jobs := bc.jobs
		b.Run(fmt.Sprintf("jobs=%d/rids=%v", jobs, bc.rids), func(b *testing.B) {
			if testing.Short() && jobs > 100_000 {
				b.Skip("short")
			}
			payload := bytes.Repeat([]byte("p"), 100)
			for i := 0; i < b.N; i++ {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				f, _ := New(DefaultConfig(), Options{})
				var rid [16]byte
				for n := 0; n < jobs; n++ {
					binary.BigEndian.PutUint64(rid[:8], uint64(n)*0x9e3779b97f4a7c15)
					binary.BigEndian.PutUint64(rid[8:], uint64(n))
					c := &internalpb.Command{
						Kind: &internalpb.Command_Submit{Submit: &internalpb.SubmitJobs{Specs: []*hodeiv1.JobSpec{
							{Kind: "k", Payload: payload},
						}}},
					}
					if bc.rids {
						c.RequestId = hex.EncodeToString(rid[:]) + "/0"
					}
					cmds := []*internalpb.Command{c}
					e := &internalpb.Entry{Version: EntryVersionFor(cmds), NowMs: 1_000_000 + int64(n/2), Commands: cmds}
					if r := f.ApplyEntry(uint64(n+1), e); r[0].GetCode() != internalpb.Code_CODE_OK {
						b.Fatal(r[0].GetMessage())
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				st := f.Stats()
				if st.Ready != jobs {
					b.Fatalf("%d ready jobs, want %d", st.Ready, jobs)
				}
				f.mu.RLock()
				recs := f.st.reqs.len()
				f.mu.RUnlock()
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(jobs), "B/pending-job")
				b.ReportMetric(float64(recs), "request-records")
				runtime.KeepAlive(f)
			}
		})
	}
}

// BenchmarkRequestRecordBytes reports the heap one request record costs in
// the table (ring slot, map entry, id and compact record): the record of a
// single-job submit, with a request id as clients make them (32 hex
// characters + "/<shard>").
//
//	go test ./fsm/ -run '^$' -bench RequestRecordBytes -benchtime 1x
func BenchmarkRequestRecordBytes(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000, DefaultConfig().MaxRequests} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				t := newRequestTable()
				var rid [16]byte
				for k := 0; k < n; k++ {
					binary.BigEndian.PutUint64(rid[:8], uint64(k)*0x9e3779b97f4a7c15)
					binary.BigEndian.PutUint64(rid[8:], uint64(k))
					c := compactRecord{kind: internalpb.RequestKind_REQUEST_KIND_SUBMIT, seqs: []uint64{uint64(k + 1)}}
					t.put(newReqRecord(hex.EncodeToString(rid[:])+"/0", int64(k), &c), DefaultConfig().MaxRequests)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				if t.len() != n {
					b.Fatalf("%d records, want %d", t.len(), n)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "B/record")
				runtime.KeepAlive(&t)
			}
		})
	}
}

// BenchmarkApplySubmitWithRequestID: one op = one entry with one
// single-job submit under its own request id (the request record's cost on
// the apply path), and every 8th op a retry of an earlier one (a replay).
func BenchmarkApplySubmitWithRequestID(b *testing.B) {
	f, _ := New(DefaultConfig(), Options{})
	payload := bytes.Repeat([]byte("p"), 100)
	var rid [16]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := i
		if i%8 == 7 {
			n = i - 4
		}
		binary.BigEndian.PutUint64(rid[8:], uint64(n))
		cmds := []*internalpb.Command{{
			RequestId: hex.EncodeToString(rid[:]) + "/0",
			Kind:      &internalpb.Command_Submit{Submit: &internalpb.SubmitJobs{Specs: []*hodeiv1.JobSpec{{Kind: "k", Payload: payload}}}},
		}}
		e := &internalpb.Entry{Version: EntryVersionFor(cmds), NowMs: 1_000_000 + int64(i/2), Commands: cmds}
		if r := f.ApplyEntry(uint64(i+1), e); r[0].GetCode() != internalpb.Code_CODE_OK {
			b.Fatal(r[0].GetMessage())
		}
	}
}

// BenchmarkLeaseDecision: the cost of one LeaseBatch (10 workers × 10 jobs,
// kinds and fair share over 16 tenants) with 10k and 1M jobs queued in the
// shard. Only the lease entry is timed; after each, its jobs are completed
// and as many new ones submitted, so the queue stays at its size. The
// metric ns/leased-job should not grow with the queue.
func BenchmarkLeaseDecision(b *testing.B) {
	for _, queued := range []int{10_000, 1_000_000} {
		b.Run(fmt.Sprintf("queued=%d", queued), func(b *testing.B) {
			f, _ := New(DefaultConfig(), Options{})
			idx := uint64(0)
			tenantSpecs := func(n int) []*hodeiv1.JobSpec {
				specs := make([]*hodeiv1.JobSpec, n)
				for i := range specs {
					specs[i] = &hodeiv1.JobSpec{Tenant: fmt.Sprintf("t%d", i%16), Kind: "k", Payload: []byte(cmd100)}
				}
				return specs
			}
			apply := func(cmds ...*internalpb.Command) []*internalpb.CommandResult {
				idx++
				return f.ApplyEntry(idx, &internalpb.Entry{Version: EntryVersionFor(cmds), NowMs: 1000, Commands: cmds})
			}
			for n := 0; n < queued; n += 1000 {
				apply(submitCmd(tenantSpecs(1000)...))
			}
			demands := make([]*internalpb.LeaseJobs, 10)
			for i := range demands {
				demands[i] = &internalpb.LeaseJobs{WorkerId: fmt.Sprintf("w%d", i), Capacity: 10, Kinds: []string{"k"}}
			}
			lease := &internalpb.Command{Kind: &internalpb.Command_LeaseBatch{LeaseBatch: &internalpb.LeaseBatch{Demands: demands}}}
			var timed time.Duration
			leased := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				r := apply(lease)[0]
				timed += time.Since(t0)
				var items []*hodeiv1.Completion
				for _, g := range r.GetGrants() {
					for _, l := range g.GetLeases() {
						items = append(items, &hodeiv1.Completion{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true})
					}
				}
				if len(items) != 100 {
					b.Fatalf("leased %d jobs, want 100", len(items))
				}
				leased += len(items)
				apply(&internalpb.Command{Kind: &internalpb.Command_CompleteJobs{CompleteJobs: &internalpb.CompleteJobs{Items: items}}}, submitCmd(tenantSpecs(100)...))
			}
			b.StopTimer()
			b.ReportMetric(float64(timed.Nanoseconds())/float64(leased), "ns/leased-job")
		})
	}
}
