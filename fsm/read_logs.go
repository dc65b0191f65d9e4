package fsm

import "github.com/hodei-io/hodei/proto/hodeiv1"

// JobLease is what the node's log store needs of a job to fence log lines:
// its state and the tokens and attempt numbers of its current lease and
// latest result (issue 11 logs).
type JobLease struct {
	State         hodeiv1.JobState
	Attempts      int32
	LeaseToken    uint64 // RUNNING: the current lease's token
	ResultToken   uint64 // the latest result's lease token (0: none)
	ResultAttempt int32
}

// GetJobLease returns the lease fields of job id without copying the job.
func (f *FSM) GetJobLease(id string) (JobLease, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.st.lookup(id)
	if !ok {
		return JobLease{}, false
	}
	return JobLease{
		State: j.GetState(), Attempts: j.GetAttempts(), LeaseToken: j.GetLeaseToken(),
		ResultToken: j.GetLastResult().GetLeaseToken(), ResultAttempt: j.GetLastResult().GetAttempt(),
	}, true
}
