package fsm

// JobTenant is the tenant of job id ("default" for a job that names none),
// without copying the job: the tenant checks of a token-limited worker's
// completions and extensions look it up per item (auth, issue 12).
func (f *FSM) JobTenant(id string) (string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.st.lookup(id)
	if !ok {
		return "", false
	}
	if t := j.GetSpec().GetTenant(); t != "" {
		return t, true
	}
	return "default", true
}
