package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func testArchive(t *testing.T) ([]byte, string) {
	t.Helper()
	hdr := &hodeiv1.SnapshotArchiveHeader{ShardCount: 2, CreatedAtMs: 1234, GroupCount: 3, CreatedBy: "n1"}
	var secs []ArchiveSection
	for _, g := range []uint32{MetaGroup, 0, 1} {
		data := []byte(fmt.Sprintf("part of group %d", g))
		secs = append(secs, ArchiveSection{Info: &hodeiv1.GroupSnapshotInfo{Group: g, Index: 7, Term: 2, Size: uint64(len(data)), Jobs: 3}, Data: data})
	}
	var buf bytes.Buffer
	sum, n, err := WriteArchive(&buf, hdr, secs)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteArchive says %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes(), sum
}

func TestArchiveRoundTripAndCorruption(t *testing.T) {
	data, sum := testArchive(t)
	a, err := ParseArchive(data)
	if err != nil {
		t.Fatal(err)
	}
	if a.SHA256 != sum || a.Size != int64(len(data)) || a.Header.GetShardCount() != 2 || len(a.Sections) != 3 {
		t.Fatalf("parsed %+v", a)
	}
	for i, g := range []uint32{MetaGroup, 0, 1} {
		if s := a.Sections[i]; s.Info.GetGroup() != g || string(s.Data) != fmt.Sprintf("part of group %d", g) {
			t.Fatalf("section %d = %v %q", i, s.Info, s.Data)
		}
	}
	// Every truncation and every single-byte change is refused.
	for n := 0; n < len(data); n++ {
		if _, err := ParseArchive(data[:n]); !errors.Is(err, ErrCorruptArchive) {
			t.Fatalf("truncated to %d bytes: err = %v", n, err)
		}
	}
	for i := range data {
		bad := bytes.Clone(data)
		bad[i] ^= 0x40
		if _, err := ParseArchive(bad); !errors.Is(err, ErrCorruptArchive) {
			t.Fatalf("byte %d changed: err = %v", i, err)
		}
	}
	// A wrong number of sections cannot be written.
	var buf bytes.Buffer
	if _, _, err := WriteArchive(&buf, &hodeiv1.SnapshotArchiveHeader{ShardCount: 1, GroupCount: 2}, nil); err == nil {
		t.Fatal("an archive with missing sections was written")
	}
}

func dialTest(t *testing.T, addr string) hodeiv1.AdminServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return hodeiv1.NewAdminServiceClient(cc)
}

func saveArchive(t *testing.T, ctx context.Context, addr string) []byte {
	t.Helper()
	st, err := dialTest(t, addr).SnapshotSave(ctx, &hodeiv1.SnapshotSaveRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return buf.Bytes()
		}
		if err != nil {
			t.Fatalf("save: %v", err)
		}
		buf.Write(m.GetData())
	}
}

func restoreArchive(t *testing.T, ctx context.Context, addr string, data []byte, force bool) (*hodeiv1.SnapshotRestoreResponse, error) {
	t.Helper()
	st, err := dialTest(t, addr).SnapshotRestore(ctx)
	if err != nil {
		return nil, err
	}
	for first := true; first || len(data) > 0; first = false {
		k := min(len(data), 1000) // small pieces: exercises reassembly
		if err := st.Send(&hodeiv1.SnapshotRestoreRequest{Data: data[:k], Force: force}); err != nil {
			break
		}
		data = data[k:]
	}
	return st.CloseAndRecv()
}

// listAll lists every job of the cluster (linearizable), sorted by id.
func listAll(t *testing.T, ctx context.Context, addr string) []*hodeiv1.Job {
	t.Helper()
	c := newClient(t, addr)
	var out []*hodeiv1.Job
	token := ""
	for {
		resp, err := c.List(ctx, &hodeiv1.ListJobsRequest{Limit: 10000, PageToken: token})
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		out = append(out, resp.GetJobs()...)
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

func sameJobs(a, b []*hodeiv1.Job) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d jobs vs %d", len(a), len(b))
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return fmt.Errorf("job %s differs:\n%v\n%v", a[i].GetId(), a[i], b[i])
		}
	}
	return nil
}

// localJobs lists every job of node n's own replicas, sorted by id.
func localJobs(n *Node) []*hodeiv1.Job {
	var out []*hodeiv1.Job
	for _, s := range n.shards {
		jobs, _ := s.fsm.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, 1<<20)
		out = append(out, jobs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// fresh reports whether no replica of tc ever held a job.
func (tc *testCluster) fresh() error {
	for _, n := range tc.nodes {
		for _, s := range n.shards {
			if st := s.fsm.Stats(); st.Jobs != 0 || s.fsm.NextSeq() != 1 {
				return fmt.Errorf("node %s shard %d: %d jobs, next seq %d", n.cfg.NodeID, s.id, st.Jobs, s.fsm.NextSeq())
			}
		}
		if tn := n.meta.fsm.State().GetTenants(); len(tn) != 0 {
			return fmt.Errorf("node %s has tenant settings %v", n.cfg.NodeID, tn)
		}
	}
	return nil
}

func wantCode(t *testing.T, what string, err error, code codes.Code, text string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), text) {
		t.Fatalf("%s: err = %v, want %v mentioning %q", what, err, code, text)
	}
}

// TestSnapshotSaveRestore: save on one 3-node cluster, restore on a fresh
// one, identical jobs; bad archives and a shard-count mismatch change nothing.
func TestSnapshotSaveRestore(t *testing.T) {
	const shards = 4
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src := startCluster(t, 3, shards)
	c := newClient(t, src.addrs()...)

	// Jobs across tenants and shards: pending (ready, delayed, labelled),
	// running (long lease), succeeded, failed, cancelled.
	tenants := []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"}
	used := map[uint32]bool{}
	var specs []*hodeiv1.JobSpec
	for i, tn := range tenants {
		used[ShardOf(tn, shards)] = true
		for j := 0; j < 4; j++ {
			sp := &hodeiv1.JobSpec{Tenant: tn, Command: []string{"echo", tn, fmt.Sprint(j)}, Priority: int32(j * 10),
				Env: []*hodeiv1.KeyValue{{Key: "K", Value: fmt.Sprint(i)}}, IdempotencyKey: fmt.Sprintf("%s-%d", tn, j)}
			switch j {
			case 2:
				sp.DelayMs = int64(time.Hour / time.Millisecond)
			case 3:
				sp.Labels = []*hodeiv1.KeyValue{{Key: "gpu", Value: "yes"}}
			}
			specs = append(specs, sp)
		}
	}
	if len(used) < 3 {
		t.Fatalf("tenants cover only shards %v", used)
	}
	if _, err := c.SubmitBatch(ctx, specs); err != nil {
		t.Fatal(err)
	}
	var leases []*hodeiv1.Lease
	for len(leases) < 8 {
		resp, err := c.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "w1", Capacity: int32(8 - len(leases)), TtlMs: 5 * 60 * 1000})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, resp.GetLeases()...)
	}
	for i, l := range leases[:5] {
		_, err := c.Complete(ctx, &hodeiv1.CompleteJobRequest{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: i < 3,
			Result: &hodeiv1.JobResult{ExitCode: int32(i), Output: []byte("out"), WorkerId: "w1"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	cancelled := specsID(t, ctx, c, "eta", 0)
	if _, err := c.Cancel(ctx, cancelled, "test"); err != nil {
		t.Fatal(err)
	}
	// A tenant setting: in the meta group, and applied by alpha's shard.
	if st, err := c.SetTenant(ctx, "alpha", 3); err != nil || st.GetShardWeight() != 3 {
		t.Fatalf("SetTenant: %v %v", st, err)
	}

	before := listAll(t, ctx, src.addrs()[0])
	if len(before) != len(specs) {
		t.Fatalf("source holds %d jobs, submitted %d", len(before), len(specs))
	}
	// Save through a node that does not lead shard 0: parts come from leaders.
	archive := saveArchive(t, ctx, src.addrs()[followerOf(src)])
	a, err := ParseArchive(archive)
	if err != nil {
		t.Fatal(err)
	}
	if a.Header.GetShardCount() != shards || len(a.Sections) != shards+1 || a.Sections[0].Info.GetTenants() != 1 {
		t.Fatalf("archive header %v, %d sections, meta %v", a.Header, len(a.Sections), a.Sections[0].Info)
	}
	total := 0
	for _, s := range a.Sections[1:] {
		total += int(s.Info.GetJobs())
		if s.Info.GetIndex() == 0 && s.Info.GetJobs() > 0 {
			t.Fatalf("section %v has no index", s.Info)
		}
	}
	if total != len(before) {
		t.Fatalf("archive holds %d jobs, cluster %d", total, len(before))
	}
	if err := sameJobs(before, listAll(t, ctx, src.addrs()[0])); err != nil {
		t.Fatalf("save changed the source: %v", err)
	}

	dst := startCluster(t, 3, shards)
	daddr := dst.addrs()[1]

	// Corrupt and truncated archives: InvalidArgument, nothing changes.
	bad := bytes.Clone(archive)
	bad[len(bad)/2] ^= 1
	_, err = restoreArchive(t, ctx, daddr, bad, false)
	wantCode(t, "corrupt archive", err, codes.InvalidArgument, "SHA-256 mismatch")
	_, err = restoreArchive(t, ctx, daddr, archive[:len(archive)-100], true)
	wantCode(t, "truncated archive", err, codes.InvalidArgument, "SHA-256 mismatch")
	_, err = restoreArchive(t, ctx, daddr, []byte("not an archive at all, but long enough to have a trailer"), false)
	wantCode(t, "garbage", err, codes.InvalidArgument, "bad magic")
	// An intact archive whose part is broken (re-checksummed): refused before any group changes.
	secs := append([]ArchiveSection(nil), a.Sections...)
	broken := bytes.Clone(secs[len(secs)-1].Data)
	broken[len(broken)-5] ^= 1
	secs[len(secs)-1] = ArchiveSection{Info: secs[len(secs)-1].Info, Data: broken}
	var rebuilt bytes.Buffer
	if _, _, err := WriteArchive(&rebuilt, a.Header, secs); err != nil {
		t.Fatal(err)
	}
	_, err = restoreArchive(t, ctx, daddr, rebuilt.Bytes(), true)
	wantCode(t, "archive with a corrupt part", err, codes.InvalidArgument, "shard 3")
	if err := dst.fresh(); err != nil {
		t.Fatalf("a refused restore changed the target: %v", err)
	}

	// Shard-count mismatch: a one-node cluster with 2 shards refuses.
	other := startCluster(t, 1, 2)
	_, err = restoreArchive(t, ctx, other.addrs()[0], archive, true)
	wantCode(t, "shard count mismatch", err, codes.FailedPrecondition, "4 shards")
	if err := other.fresh(); err != nil {
		t.Fatalf("a refused restore changed the target: %v", err)
	}

	// The restore.
	start := time.Now()
	resp, err := restoreArchive(t, ctx, daddr, archive, false)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Logf("restore of %d bytes took %v: %v", len(archive), time.Since(start), resp.GetRestoredIndex())
	if resp.GetSha256() != a.SHA256 || len(resp.GetRestoredIndex()) != shards+1 {
		t.Fatalf("restore response %v", resp)
	}
	// Raft put each shard's state past the index its state machine recorded.
	for i, s := range a.Sections[1:] {
		if got := resp.GetRestoredIndex()[i+1]; got <= s.Info.GetIndex() {
			t.Fatalf("shard %d restored at index %d, its state machine says %d", i, got, s.Info.GetIndex())
		}
	}
	if err := sameJobs(before, listAll(t, ctx, dst.addrs()[0])); err != nil {
		t.Fatalf("restored jobs differ: %v", err)
	}
	// Every replica (followers installed the snapshot from their leader).
	for _, n := range dst.nodes {
		waitFor(t, 30*time.Second, "node "+n.cfg.NodeID+" to hold the restored jobs", func() bool { return sameJobs(before, localJobs(n)) == nil })
		waitFor(t, 30*time.Second, "node "+n.cfg.NodeID+" to hold the restored tenant setting", func() bool { return n.meta.fsm.TenantWeight("alpha") == 3 })
		waitFor(t, 30*time.Second, "node "+n.cfg.NodeID+" to apply the restored tenant weight", func() bool {
			return n.shards[ShardOf("alpha", shards)].fsm.TenantWeight("alpha") == 3
		})
		var ids []string
		for _, m := range n.meta.fsm.State().GetMembers() {
			ids = append(ids, m.GetId()+"="+m.GetGrpcAddr())
		}
		want := []string{}
		for _, p := range dst.peers {
			want = append(want, p.ID+"="+p.Addr)
		}
		if strings.Join(ids, ",") != strings.Join(want, ",") {
			t.Fatalf("node %s: members %v, want the target's own %v", n.cfg.NodeID, ids, want)
		}
	}

	// New submits get fresh ids; an idempotency key of the archive still dedupes.
	dc := newClient(t, dst.addrs()...)
	old := map[string]bool{}
	maxSeq := map[uint32]uint64{}
	for _, j := range before {
		old[j.GetId()] = true
		maxSeq[j.GetShard()] = max(maxSeq[j.GetShard()], j.GetSeq())
	}
	for _, tn := range tenants {
		r, err := dc.Submit(ctx, &hodeiv1.JobSpec{Tenant: tn, Command: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		j := r.GetJob()
		if old[j.GetId()] || j.GetSeq() <= maxSeq[j.GetShard()] {
			t.Fatalf("new job %s (seq %d) collides with restored ids (max seq of shard %d: %d)", j.GetId(), j.GetSeq(), j.GetShard(), maxSeq[j.GetShard()])
		}
		old[j.GetId()] = true
		maxSeq[j.GetShard()] = j.GetSeq()
	}
	dup, err := dc.Submit(ctx, specs[0])
	if err != nil || !dup.GetDuplicate() || dup.GetJob().GetId() != before[indexOf(before, specs[0])].GetId() {
		t.Fatalf("resubmit of a restored idempotency key: %v %v", dup, err)
	}
	// A running job's lease still fences: its token completes it.
	// (One of the still-running leases: the cancelled job may be among the
	// leased ones, depending on which shards were leased first.)
	l := leases[5]
	if l.GetJob().GetId() == cancelled {
		l = leases[6]
	}
	done, err := dc.Complete(ctx, &hodeiv1.CompleteJobRequest{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true})
	if err != nil || done.GetJob().GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("complete a restored lease: %v %v", done, err)
	}

	// The target now holds jobs: a second restore without --force is refused.
	now := listAll(t, ctx, dst.addrs()[0])
	_, err = restoreArchive(t, ctx, daddr, archive, false)
	wantCode(t, "restore onto a cluster with jobs", err, codes.FailedPrecondition, "--force")
	if err := sameJobs(now, listAll(t, ctx, dst.addrs()[0])); err != nil {
		t.Fatalf("a refused restore changed the target: %v", err)
	}
	// With force it replaces the state again.
	if _, err := restoreArchive(t, ctx, dst.addrs()[2], archive, true); err != nil {
		t.Fatalf("forced restore: %v", err)
	}
	if err := sameJobs(before, listAll(t, ctx, dst.addrs()[0])); err != nil {
		t.Fatalf("after a forced restore: %v", err)
	}

	// A restarted node reopens the restored state from its own snapshot and
	// log, and every replica applies new entries after it.
	if err := dst.nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	dst.restart(0)
	waitFor(t, 30*time.Second, "the restarted node to hold the restored jobs", func() bool { return sameJobs(before, localJobs(dst.nodes[0])) == nil })
	r, err := dc.Submit(ctx, &hodeiv1.JobSpec{Tenant: "alpha", Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range dst.nodes {
		waitFor(t, 30*time.Second, "node "+n.cfg.NodeID+" to apply a submit after the restart", func() bool {
			_, ok := n.shards[r.GetJob().GetShard()].fsm.GetJob(r.GetJob().GetId())
			return ok
		})
	}
}

// specsID returns the id of tenant's job with idempotency key tenant-j.
func specsID(t *testing.T, ctx context.Context, c interface {
	Submit(context.Context, *hodeiv1.JobSpec) (*hodeiv1.SubmitJobResponse, error)
}, tenant string, j int) string {
	t.Helper()
	r, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"echo", tenant, fmt.Sprint(j)}, IdempotencyKey: fmt.Sprintf("%s-%d", tenant, j)})
	if err != nil || !r.GetDuplicate() {
		t.Fatalf("lookup by idempotency key: %v %v", r, err)
	}
	return r.GetJob().GetId()
}

func indexOf(jobs []*hodeiv1.Job, sp *hodeiv1.JobSpec) int {
	for i, j := range jobs {
		if j.GetSpec().GetTenant() == sp.GetTenant() && j.GetSpec().GetIdempotencyKey() == sp.GetIdempotencyKey() {
			return i
		}
	}
	return -1
}
