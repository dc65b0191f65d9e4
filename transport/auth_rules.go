package transport

import (
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Need is what a caller must hold to make a call (auth, issue 12).
type Need uint8

const (
	// NeedPublic: anyone, without a token (health checks only).
	NeedPublic Need = iota + 1
	// NeedAny: any verified caller: a token of any role, or a node.
	NeedAny
	// NeedAdmin: the admin role.
	NeedAdmin
	// NeedSubmit: a tenant:<name>:submit role; the handler checks the tenant.
	NeedSubmit
	// NeedRead: a tenant:<name>:read or :submit role; the handler checks the tenant.
	NeedRead
	// NeedWorker: a worker role; the handler applies its tenant and kind limits.
	NeedWorker
	// NeedNode: a node of the cluster only (node credential or, with TLS, a
	// server certificate): Raft and the dispatchers' bulk leases.
	NeedNode
)

func (n Need) String() string {
	switch n {
	case NeedPublic:
		return "public"
	case NeedAny:
		return "any"
	case NeedAdmin:
		return "admin"
	case NeedSubmit:
		return "tenant submit"
	case NeedRead:
		return "tenant read"
	case NeedWorker:
		return "worker"
	case NeedNode:
		return "node"
	}
	return "unknown"
}

// Rule is the authorization of one RPC. The admin role passes every rule
// except NeedNode. Node says a node may also make the call without a
// caller's token (its own calls: the balancer's transfers, a joining node,
// a dispatcher's completions and extensions).
type Rule struct {
	Need Need
	Node bool
}

// Rules maps the full method name of every RPC served by a node to its
// rule. A method missing here is refused (PermissionDenied): nothing is
// open by default. TestAuthRulesCoverEveryMethod fails for a registered
// method without a rule. Add new services here, one line per RPC.
var Rules = map[string]Rule{
	// JobService
	hodeiv1.JobService_SubmitJob_FullMethodName:     {Need: NeedSubmit},
	hodeiv1.JobService_SubmitJobs_FullMethodName:    {Need: NeedSubmit},
	hodeiv1.JobService_GetJob_FullMethodName:        {Need: NeedRead},
	hodeiv1.JobService_ListJobs_FullMethodName:      {Need: NeedRead},
	hodeiv1.JobService_CancelJob_FullMethodName:     {Need: NeedSubmit},
	hodeiv1.JobService_WatchJobs_FullMethodName:     {Need: NeedRead},
	hodeiv1.JobService_GetJobLogs_FullMethodName:    {Need: NeedRead},
	hodeiv1.JobService_FollowJobLogs_FullMethodName: {Need: NeedRead},
	hodeiv1.JobService_RetryJob_FullMethodName:      {Need: NeedSubmit},
	hodeiv1.JobService_RequeueJobs_FullMethodName:   {Need: NeedSubmit},

	// WorkerService
	hodeiv1.WorkerService_Connect_FullMethodName:      {Need: NeedWorker},
	hodeiv1.WorkerService_Lease_FullMethodName:        {Need: NeedWorker},
	hodeiv1.WorkerService_ExtendLeases_FullMethodName: {Need: NeedWorker, Node: true},
	hodeiv1.WorkerService_CompleteJob_FullMethodName:  {Need: NeedWorker},
	hodeiv1.WorkerService_CompleteJobs_FullMethodName: {Need: NeedWorker, Node: true},
	hodeiv1.WorkerService_LeaseFor_FullMethodName:     {Need: NeedNode},

	// AdminService
	hodeiv1.AdminService_Status_FullMethodName:          {Need: NeedAny, Node: true},
	hodeiv1.AdminService_Join_FullMethodName:            {Need: NeedAdmin, Node: true},
	hodeiv1.AdminService_Remove_FullMethodName:          {Need: NeedAdmin},
	hodeiv1.AdminService_TransferLeader_FullMethodName:  {Need: NeedAdmin, Node: true},
	hodeiv1.AdminService_SnapshotSave_FullMethodName:    {Need: NeedAdmin},
	hodeiv1.AdminService_SnapshotRestore_FullMethodName: {Need: NeedAdmin},
	hodeiv1.AdminService_SnapshotGroup_FullMethodName:   {Need: NeedAdmin, Node: true},
	hodeiv1.AdminService_RestoreGroup_FullMethodName:    {Need: NeedAdmin, Node: true},
	hodeiv1.AdminService_SetTenant_FullMethodName:       {Need: NeedAdmin},
	hodeiv1.AdminService_ListTenants_FullMethodName:     {Need: NeedRead}, // filtered to the caller's tenants

	// ScheduleService
	hodeiv1.ScheduleService_CreateSchedule_FullMethodName:   {Need: NeedSubmit},
	hodeiv1.ScheduleService_GetSchedule_FullMethodName:      {Need: NeedRead},
	hodeiv1.ScheduleService_ListSchedules_FullMethodName:    {Need: NeedRead},
	hodeiv1.ScheduleService_PauseSchedule_FullMethodName:    {Need: NeedSubmit},
	hodeiv1.ScheduleService_ResumeSchedule_FullMethodName:   {Need: NeedSubmit},
	hodeiv1.ScheduleService_TriggerSchedule_FullMethodName:  {Need: NeedSubmit},
	hodeiv1.ScheduleService_BackfillSchedule_FullMethodName: {Need: NeedSubmit},
	hodeiv1.ScheduleService_DeleteSchedule_FullMethodName:   {Need: NeedSubmit},

	// PipelineService (issue 13): the handlers check the pipeline's tenant.
	hodeiv1.PipelineService_SubmitPipeline_FullMethodName: {Need: NeedSubmit},
	hodeiv1.PipelineService_GetPipeline_FullMethodName:    {Need: NeedRead},
	hodeiv1.PipelineService_ListPipelines_FullMethodName:  {Need: NeedRead},
	hodeiv1.PipelineService_CancelPipeline_FullMethodName: {Need: NeedSubmit},
	hodeiv1.PipelineService_RetryPipeline_FullMethodName:  {Need: NeedSubmit},

	// AuthService
	hodeiv1.AuthService_CreateToken_FullMethodName: {Need: NeedAdmin},
	hodeiv1.AuthService_ListTokens_FullMethodName:  {Need: NeedAdmin},
	hodeiv1.AuthService_RevokeToken_FullMethodName: {Need: NeedAdmin},

	// RaftTransport (internal, node to node)
	internalpb.RaftTransport_AppendEntries_FullMethodName:         {Need: NeedNode},
	internalpb.RaftTransport_AppendEntriesPipeline_FullMethodName: {Need: NeedNode},
	internalpb.RaftTransport_RequestVote_FullMethodName:           {Need: NeedNode},
	internalpb.RaftTransport_RequestPreVote_FullMethodName:        {Need: NeedNode},
	internalpb.RaftTransport_TimeoutNow_FullMethodName:            {Need: NeedNode},
	internalpb.RaftTransport_InstallSnapshot_FullMethodName:       {Need: NeedNode},

	// gRPC health (load balancers, orchestrators) and reflection.
	grpc_health_v1.Health_Check_FullMethodName:                       {Need: NeedPublic},
	grpc_health_v1.Health_List_FullMethodName:                        {Need: NeedPublic},
	grpc_health_v1.Health_Watch_FullMethodName:                       {Need: NeedPublic},
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      {Need: NeedAny},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {Need: NeedAny},
}
