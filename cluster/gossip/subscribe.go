package gossip

import "sync"

// subscriber delivers member changes to one consumer without ever blocking
// the memberlist goroutine that reports them.
//
// Events are coalesced per member name: while an event for a member is still
// waiting to be delivered, a newer change of that member replaces it in
// place. A slow subscriber therefore loses intermediate states (e.g. it may
// see Alive -> Dead and never the Alive -> Suspect -> Alive in between), but
// it always eventually receives the latest state of every member that
// changed, and per member the states it receives are in the order they
// happened. Memory is bounded by the number of members.
type subscriber struct {
	out  chan Member
	wake chan struct{} // capacity 1
	done chan struct{}

	mu      sync.Mutex
	pending map[string]Member
	order   []string // names with a pending event, FIFO
	closed  bool

	stopOnce sync.Once
	exited   chan struct{}
}

func newSubscriber(initial []Member) *subscriber {
	s := &subscriber{
		out:     make(chan Member),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		pending: make(map[string]Member),
		exited:  make(chan struct{}),
	}
	for _, m := range initial {
		s.push(m)
	}
	go s.run()
	return s
}

// push queues m, replacing any undelivered event for the same member.
// It never blocks.
func (s *subscriber) push(m Member) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if _, ok := s.pending[m.Name]; !ok {
		s.order = append(s.order, m.Name)
	}
	s.pending[m.Name] = m
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) pop() (Member, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) == 0 {
		return Member{}, false
	}
	name := s.order[0]
	s.order[0] = ""
	s.order = s.order[1:]
	m := s.pending[name]
	delete(s.pending, name)
	return m, true
}

func (s *subscriber) run() {
	defer close(s.exited)
	defer close(s.out)
	for {
		m, ok := s.pop()
		if !ok {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.out <- m:
		case <-s.done:
			return
		}
	}
}

// stop ends delivery, closes the channel and waits for the goroutine.
// Idempotent.
func (s *subscriber) stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.pending = nil
		s.order = nil
		s.mu.Unlock()
		close(s.done)
	})
	<-s.exited
}
