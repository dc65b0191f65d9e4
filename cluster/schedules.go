package cluster

// Cron schedules (issue 11): the ScheduleService backend and the
// schedules' metrics. Schedule state lives in the FSM of the tenant's
// shard; the shard leader's timers fire it (scheduler/cron.go).

import (
	"context"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

var _ transport.ScheduleBackend = (*Node)(nil)

func (n *Node) ValidateSchedule(sc *hodeiv1.Schedule) error {
	_, _, err := fsm.ValidateSchedule(sc, n.cfg.FSM)
	return err
}

func (n *Node) CreateSchedule(ctx context.Context, id uint32, sc *hodeiv1.Schedule, requestID string) (*hodeiv1.Schedule, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_CreateSchedule{CreateSchedule: &internalpb.CreateSchedule{Schedule: sc}}})
	if err != nil {
		return nil, err
	}
	return res.GetSchedule(), nil
}

func (n *Node) PauseSchedule(ctx context.Context, id uint32, tenant, sid string, paused bool, note, requestID string) (*hodeiv1.Schedule, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_PauseSchedule{PauseSchedule: &internalpb.PauseSchedule{
		Tenant: tenant, Id: sid, Paused: paused, Note: note}}})
	if err != nil {
		return nil, err
	}
	return res.GetSchedule(), nil
}

func (n *Node) TriggerSchedule(ctx context.Context, id uint32, tenant, sid, requestID string) (*hodeiv1.Schedule, *hodeiv1.Job, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_TriggerSchedule{TriggerSchedule: &internalpb.TriggerSchedule{Tenant: tenant, Id: sid}}})
	if err != nil {
		return nil, nil, err
	}
	var job *hodeiv1.Job
	if js := res.GetScheduleJobs(); len(js) > 0 {
		job = js[0].GetJob()
	}
	return res.GetSchedule(), job, nil
}

func (n *Node) BackfillSchedule(ctx context.Context, id uint32, tenant, sid string, fromMs, toMs int64, requestID string) (*hodeiv1.Schedule, []*hodeiv1.SubmitJobResponse, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_BackfillSchedule{BackfillSchedule: &internalpb.BackfillSchedule{
		Tenant: tenant, Id: sid, FromMs: fromMs, ToMs: toMs}}})
	if err != nil {
		return nil, nil, err
	}
	return res.GetSchedule(), res.GetScheduleJobs(), nil
}

func (n *Node) DeleteSchedule(ctx context.Context, id uint32, tenant, sid, requestID string) error {
	_, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_DeleteSchedule{DeleteSchedule: &internalpb.DeleteSchedule{Tenant: tenant, Id: sid}}})
	return err
}

func (n *Node) GetSchedule(id uint32, tenant, sid string) (*hodeiv1.Schedule, bool) {
	s, err := n.shard(id)
	if err != nil {
		return nil, false
	}
	return s.fsm.GetSchedule(tenant, sid)
}

func (n *Node) ListSchedules(id uint32, tenant string) []*hodeiv1.Schedule {
	s, err := n.shard(id)
	if err != nil {
		return nil
	}
	return s.fsm.ListSchedules(tenant)
}

// scheduleCollector exports per-tenant totals of the schedules held by this
// node's shard replicas (labels: tenant, and outcome for slots; no
// per-schedule labels, so cardinality is bounded by the tenants).
type scheduleCollector struct {
	n                 *Node
	schedules, paused *prometheus.Desc
	slots             *prometheus.Desc
}

func newScheduleCollector(n *Node) *scheduleCollector {
	return &scheduleCollector{
		n:         n,
		schedules: prometheus.NewDesc("hodei_schedules", "Cron schedules held by this node's shard replicas, by tenant.", []string{"tenant"}, nil),
		paused:    prometheus.NewDesc("hodei_schedules_paused", "Paused cron schedules, by tenant.", []string{"tenant"}, nil),
		slots: prometheus.NewDesc("hodei_schedule_slots_total",
			"Schedule slots by outcome (fired: job created, incl. trigger and backfill; skipped: overlap policy; missed: older than the catch-up window), by tenant, from the replicated counters (a deleted schedule's counts leave the total).",
			[]string{"tenant", "outcome"}, nil),
	}
}

func (c *scheduleCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.schedules
	ch <- c.paused
	ch <- c.slots
}

func (c *scheduleCollector) Collect(ch chan<- prometheus.Metric) {
	tot := map[string]fsm.ScheduleTotals{}
	for _, s := range c.n.shards {
		for tenant, t := range s.fsm.ScheduleTotals() {
			a := tot[tenant]
			a.Schedules += t.Schedules
			a.Paused += t.Paused
			a.Fired += t.Fired
			a.Skipped += t.Skipped
			a.Missed += t.Missed
			tot[tenant] = a
		}
	}
	names := make([]string, 0, len(tot))
	for name := range tot {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t := tot[name]
		ch <- prometheus.MustNewConstMetric(c.schedules, prometheus.GaugeValue, float64(t.Schedules), name)
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, float64(t.Paused), name)
		ch <- prometheus.MustNewConstMetric(c.slots, prometheus.CounterValue, float64(t.Fired), name, "fired")
		ch <- prometheus.MustNewConstMetric(c.slots, prometheus.CounterValue, float64(t.Skipped), name, "skipped")
		ch <- prometheus.MustNewConstMetric(c.slots, prometheus.CounterValue, float64(t.Missed), name, "missed")
	}
}
