package client

import (
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// fakeWorkerNode is a test double of a node's WorkerService.Connect: a
// queue of jobs pushed within the credit of the current stream, recorded
// messages, and knobs to refuse, hold back or cut.
type fakeWorkerNode struct {
	hodeiv1.UnimplementedWorkerServiceServer
	name     string
	ttlMs    int64 // granted TTL; 0: the hello's
	maxSlots int32

	mu    sync.Mutex
	queue []*hodeiv1.Job
	token uint64
	cur   *fakeWorkerStream

	// knobs
	rejectHellos    int        // answer this many hellos with rejectCode
	rejectCode      codes.Code //
	endAfterWelcome codes.Code // end every stream right after the welcome with this code
	holdCompletions bool       // record completions, answer none
	refuse          map[string]string
	lostJobs        map[string]bool // extensions of these jobs are refused
	ignoreExtends   bool

	// records
	hellos         []*hodeiv1.WorkerHello
	helloAt        []time.Time
	completions    []*hodeiv1.Completion
	complStream    []int // stream index of each completion
	complMsgs      []int // completions per message
	accepted       map[string]bool
	extends        map[int][]*hodeiv1.LeaseRef // per stream index
	slotsMsgs      []int32
	closedSend     int
	overCredit     int // WorkerSlots that took the credit above maxSlots
	credit         int
	outstanding    map[string]bool // leased, no completion received
	maxOutstanding int             // max of credit + outstanding
}

type fakeWorkerStream struct {
	idx    int
	srv    hodeiv1.WorkerService_ConnectServer
	sendMu sync.Mutex
	dead   bool
	cut    chan struct{}
}

func (s *fakeWorkerStream) send(m *hodeiv1.ServerMessage) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if !s.dead {
		_ = s.srv.Send(m)
	}
}

func (s *fakeWorkerStream) kill() {
	s.sendMu.Lock()
	s.dead = true
	s.sendMu.Unlock()
}

func newFakeWorkerNode(name string) *fakeWorkerNode {
	return &fakeWorkerNode{
		name:        name,
		refuse:      map[string]string{},
		lostJobs:    map[string]bool{},
		accepted:    map[string]bool{},
		extends:     map[int][]*hodeiv1.LeaseRef{},
		outstanding: map[string]bool{},
	}
}

// serveWorkerNode serves f on a loopback listener until the test ends.
func serveWorkerNode(t testing.TB, f *fakeWorkerNode) string {
	t.Helper()
	addr, stop, err := startWorkerNode(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

func startWorkerNode(f *fakeWorkerNode) (string, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	s := grpc.NewServer()
	hodeiv1.RegisterWorkerServiceServer(s, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	return lis.Addr().String(), func() { s.Stop(); <-done }, nil
}

// FakeWorkerCluster (test only) serves a stand-in for a Hodei cluster on
// loopback with specs queued as jobs "job-1", "job-2", ..., for the examples.
func FakeWorkerCluster(specs ...*hodeiv1.JobSpec) (addr string, stop func()) {
	f := newFakeWorkerNode("fake")
	for i, s := range specs {
		f.queue = append(f.queue, &hodeiv1.Job{Id: "job-" + strconv.Itoa(i+1), Spec: s})
	}
	addr, stop, err := startWorkerNode(f)
	if err != nil {
		panic(err)
	}
	return addr, stop
}

func (f *fakeWorkerNode) Connect(srv hodeiv1.WorkerService_ConnectServer) error {
	m, err := srv.Recv()
	if err != nil {
		return err
	}
	hello := m.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "fake: first message is not a hello")
	}
	f.mu.Lock()
	f.hellos = append(f.hellos, hello)
	f.helloAt = append(f.helloAt, time.Now())
	if f.rejectHellos > 0 {
		f.rejectHellos--
		code := f.rejectCode
		f.mu.Unlock()
		return status.Error(code, "fake: hello rejectedCompletion")
	}
	if f.maxSlots > 0 && hello.GetSlots() > f.maxSlots {
		f.mu.Unlock()
		return status.Errorf(codes.InvalidArgument, "fake: slots %d is outside 0..%d", hello.GetSlots(), f.maxSlots)
	}
	fs := &fakeWorkerStream{idx: len(f.hellos) - 1, srv: srv, cut: make(chan struct{})}
	f.cur = fs
	f.credit = int(hello.GetSlots())
	ttl := f.ttlMs
	if ttl == 0 {
		ttl = hello.GetTtlMs()
	}
	end := f.endAfterWelcome
	f.mu.Unlock()
	fs.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Welcome{Welcome: &hodeiv1.ServerWelcome{NodeId: f.name, TtlMs: ttl, MaxSlots: f.maxSlots}}})
	if end != codes.OK {
		fs.kill()
		return status.Error(end, "fake: bad message")
	}
	f.push()

	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := srv.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			f.handle(fs, m)
		}
	}()
	select {
	case err := <-recvErr:
		fs.kill()
		if err == io.EOF {
			f.mu.Lock()
			f.closedSend++
			f.mu.Unlock()
			return nil
		}
		return err
	case <-fs.cut:
		fs.kill()
		return status.Error(codes.Unavailable, "fake: stream cut")
	}
}

// push sends queued jobs within the current stream's credit.
func (f *fakeWorkerNode) push() {
	f.mu.Lock()
	fs := f.cur
	var leases []*hodeiv1.Lease
	for f.credit > 0 && len(f.queue) > 0 && fs != nil {
		j := f.queue[0]
		f.queue = f.queue[1:]
		f.credit--
		f.token++
		j.Attempts++
		j.LeaseToken = f.token
		f.outstanding[j.GetId()] = true
		leases = append(leases, &hodeiv1.Lease{Job: j, Token: f.token, TtlMs: f.ttlMs})
	}
	f.maxOutstanding = max(f.maxOutstanding, f.credit+len(f.outstanding))
	f.mu.Unlock()
	if len(leases) > 0 {
		fs.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Leases{Leases: &hodeiv1.ServerLeases{Leases: leases}}})
	}
}

func (f *fakeWorkerNode) handle(fs *fakeWorkerStream, m *hodeiv1.WorkerMessage) {
	switch msg := m.GetMsg().(type) {
	case *hodeiv1.WorkerMessage_Slots:
		f.mu.Lock()
		f.slotsMsgs = append(f.slotsMsgs, msg.Slots.GetSlots())
		if f.cur == fs {
			f.credit += int(msg.Slots.GetSlots())
			if f.maxSlots > 0 && f.credit > int(f.maxSlots) {
				f.overCredit++ // the real node ends the stream
			}
		}
		f.mu.Unlock()
		f.push()
	case *hodeiv1.WorkerMessage_Completions:
		f.mu.Lock()
		cs := msg.Completions.GetCompletions()
		f.complMsgs = append(f.complMsgs, len(cs))
		hold := f.holdCompletions
		var results []*hodeiv1.CompletionResult
		for _, c := range cs {
			f.completions = append(f.completions, c)
			f.complStream = append(f.complStream, fs.idx)
			delete(f.outstanding, c.GetJobId())
			r := &hodeiv1.CompletionResult{JobId: c.GetJobId(), Token: c.GetToken(), Ok: true, State: hodeiv1.JobState_JOB_STATE_SUCCEEDED}
			if code := f.refuse[c.GetJobId()]; code != "" {
				r = &hodeiv1.CompletionResult{JobId: c.GetJobId(), Token: c.GetToken(), Code: code, Reason: "fake refusal"}
				if code == "UNAVAILABLE" {
					delete(f.refuse, c.GetJobId()) // once
				}
			} else {
				f.accepted[c.GetJobId()] = true
			}
			results = append(results, r)
		}
		f.mu.Unlock()
		if !hold {
			fs.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Completions{Completions: &hodeiv1.ServerCompletions{Results: results}}})
		}
	case *hodeiv1.WorkerMessage_Extend:
		f.mu.Lock()
		var results []*hodeiv1.ExtendResult
		for _, r := range msg.Extend.GetLeases() {
			f.extends[fs.idx] = append(f.extends[fs.idx], r)
			ok := !f.lostJobs[r.GetJobId()]
			res := &hodeiv1.ExtendResult{JobId: r.GetJobId(), Ok: ok}
			if !ok {
				res.Reason = "fake: lease lost"
			}
			results = append(results, res)
		}
		ignore := f.ignoreExtends
		f.mu.Unlock()
		if !ignore {
			fs.send(&hodeiv1.ServerMessage{Msg: &hodeiv1.ServerMessage_Extended{Extended: &hodeiv1.ServerExtended{Results: results}}})
		}
	}
}

// submit queues jobs and pushes what the credit allows.
func (f *fakeWorkerNode) submit(jobs ...*hodeiv1.Job) {
	f.mu.Lock()
	f.queue = append(f.queue, jobs...)
	f.mu.Unlock()
	f.push()
}

// send pushes a message on the current stream.
func (f *fakeWorkerNode) send(m *hodeiv1.ServerMessage) {
	f.mu.Lock()
	fs := f.cur
	f.mu.Unlock()
	fs.send(m)
}

// cut ends the current stream with Unavailable.
func (f *fakeWorkerNode) cut() {
	f.mu.Lock()
	fs := f.cur
	f.cur = nil
	f.mu.Unlock()
	close(fs.cut)
}

func (f *fakeWorkerNode) with(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeWorkerNode) helloCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.hellos)
}

// completionsOf returns every completion received for job id.
func (f *fakeWorkerNode) completionsOf(id string) []*hodeiv1.Completion {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*hodeiv1.Completion
	for _, c := range f.completions {
		if c.GetJobId() == id {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeWorkerNode) extendedOn(stream int, id string) []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for _, r := range f.extends[stream] {
		if r.GetJobId() == id {
			out = append(out, r.GetToken())
		}
	}
	return slices.Compact(out)
}
