package messages

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestJSONRoundTrip(t *testing.T) {
	at := time.Date(2026, 4, 20, 10, 30, 0, 0, time.UTC)
	later := time.Date(2026, 4, 20, 11, 0, 5, 0, time.UTC)
	yes, no := true, false
	view := ClaimView{
		TenantID: "org.acme", Workload: "my-agent", Phase: PhaseActive, InstanceID: "my-agent-3f9a1c2b",
		Endpoint: &Endpoint{Host: "10.0.0.7", Port: 8080}, Source: SourcePoolData, ClaimedAt: &at, Detail: "restored generation 3",
	}
	inst := Instance{
		InstanceID: "my-agent-3f9a1c2b", Workload: "my-agent", Pool: "my-agent-pool", TenantID: "org.acme",
		Endpoint: &Endpoint{Host: "10.0.0.7", Port: 8080}, Ready: true, Phase: "acquired", Detail: "warm",
		Overlays: true, ReleaseAction: "hibernate",
	}
	snap := Snapshot{
		TenantID: "org.acme", Workload: "my-agent", Path: "org_2eacme/my-agent/3.tar.gz", Size: 12345,
		SHA256: strings.Repeat("ab", 32), Generation: 3, CreatedAt: at,
	}
	tests := []struct {
		name string
		v    any // pointer to a populated value
	}{
		{"Endpoint", &Endpoint{Host: "h", Port: 1}},
		{"ClaimRequest", &ClaimRequest{TenantID: "org.acme", Workload: "my-agent", Resume: &no, RequestID: "r-1", WaitMillis: 5000}},
		{"ClaimRequest resume true", &ClaimRequest{TenantID: "a", Workload: "w", Resume: &yes}},
		{"ClaimRequest minimal", &ClaimRequest{TenantID: "a", Workload: "w"}},
		{"ClaimView", &view},
		{"ClaimView minimal", &ClaimView{TenantID: "a", Phase: PhasePending}},
		{"ReleaseRequest", &ReleaseRequest{TenantID: "org.acme", Workload: "my-agent", Reason: ReasonClaimDeleted, Force: true, WaitMillis: 5000}},
		{"ClaimGetRequest", &ClaimGetRequest{TenantID: "org.acme", Workload: "my-agent"}},
		{"TenantGetRequest", &TenantGetRequest{TenantID: "org.acme"}},
		{"TenantView", &TenantView{TenantID: "org.acme", Claims: []ClaimView{view, {TenantID: "org.acme", Workload: "other", Phase: PhaseError, Detail: "boom"}}}},
		{"TenantListRequest", &TenantListRequest{}},
		{"TenantList", &TenantList{Tenants: []TenantView{{TenantID: "org.acme", Claims: []ClaimView{view}}, {TenantID: "b", Claims: []ClaimView{}}}}},
		{"AcquireRequest", &AcquireRequest{Workload: "my-agent", TenantID: "org.acme", ClaimKey: ClaimKey("org.acme", "my-agent"), ClaimID: "c1"}},
		{"ClaimRecord", &ClaimRecord{TenantID: "org.acme", Workload: "my-agent", ID: "c1", Phase: PhaseActive, InstanceID: "i-1",
			Endpoint: &Endpoint{Host: "127.1.0.2", Port: 8080}, Source: SourceCold, ClaimedAt: &at, Resume: true, Detail: "d",
			RestoredGeneration: 4, ReleaseReason: ReasonIdle, Overlays: true, ReleaseAction: "destroy", LastActivity: &later, CreatedAt: at, UpdatedAt: later, Deadline: later, Owner: "r1"}},
		{"Instance", &inst},
		{"BootRequest", &BootRequest{TenantID: "org.acme", Workload: "my-agent", ClaimKey: "org_2eacme.my-agent", ClaimID: "c1", RestoreGeneration: 3}},
		{"RetireRequest", &RetireRequest{InstanceID: "i-1", Workload: "my-agent", TenantID: "org.acme", Reason: "released"}},
		{"RetireReply", &RetireReply{Retired: true}},
		{"Snapshot", &snap},
		{"ExtractRequest", &ExtractRequest{TenantID: "org.acme", Workload: "my-agent", InstanceID: "i-1", RestoredGeneration: 2, Force: true}},
		{"RestoreRequest", &RestoreRequest{TenantID: "org.acme", Workload: "my-agent", InstanceID: "i-1", Generation: 2}},
		{"RestoreReply", &RestoreReply{Generation: 2, Restored: true}},
		{"OverlayListRequest", &OverlayListRequest{TenantID: "org.acme", Workload: "my-agent"}},
		{"SnapshotList", &SnapshotList{Snapshots: []Snapshot{snap, {TenantID: "b", Workload: "w", Generation: 1, CreatedAt: later}}}},
		{"OverlayDeleteRequest", &OverlayDeleteRequest{TenantID: "org.acme", Workload: "my-agent"}},
		{"OverlayDeleteReply", &OverlayDeleteReply{Deleted: 4}},
		{"Activity", &Activity{TenantID: "org.acme", Workload: "my-agent", At: later}},
		{"Event claim", &Event{Kind: EventClaim, TenantID: "org.acme", Workload: "my-agent", Claim: &view, Reason: string(ReasonIdle), At: later}},
		{"Event instance", &Event{Kind: EventInstance, Workload: "my-agent", Instance: &inst, At: later}},
		{"Error", &Error{Code: CodeCapacityExhausted, Message: "pool my-agent is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			got := reflect.New(reflect.TypeOf(tt.v).Elem()).Interface()
			if err := json.Unmarshal(b, got); err != nil {
				t.Fatalf("unmarshal %s: %v", b, err)
			}
			if !reflect.DeepEqual(got, tt.v) {
				t.Errorf("round trip of %s:\n got %#v\nwant %#v", b, got, tt.v)
			}
		})
	}
}

func TestJSONShapes(t *testing.T) {
	at := time.Date(2026, 4, 20, 10, 30, 0, 0, time.UTC)
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"claim view", ClaimView{
			TenantID: "alice", Phase: PhaseActive, InstanceID: "i-1", Endpoint: &Endpoint{Host: "10.0.0.7", Port: 8080},
			Source: SourcePool, ClaimedAt: Timestamp(at.Add(999 * time.Millisecond).In(time.FixedZone("x", 3600))),
		}, `{"tenantId":"alice","phase":"Active","instanceId":"i-1","endpoint":{"host":"10.0.0.7","port":8080},"source":"pool","claimedAt":"2026-04-20T10:30:00Z"}`},
		{"claim view minimal", ClaimView{TenantID: "alice", Phase: PhasePending}, `{"tenantId":"alice","phase":"Pending"}`},
		{"claim request", ClaimRequest{TenantID: "alice", Workload: "my-agent"}, `{"tenantId":"alice","workload":"my-agent"}`},
		{"empty tenant view", TenantView{TenantID: "alice"}, `{"tenantId":"alice","claims":[]}`},
		{"empty tenant view ptr", &TenantView{TenantID: "alice"}, `{"tenantId":"alice","claims":[]}`},
		{"empty tenant list", TenantList{}, `{"tenants":[]}`},
		{"tenant list nested", TenantList{Tenants: []TenantView{{TenantID: "a"}}}, `{"tenants":[{"tenantId":"a","claims":[]}]}`},
		{"empty snapshot list", SnapshotList{}, `{"snapshots":[]}`},
		{"instance not ready", Instance{InstanceID: "i", Workload: "w"}, `{"instanceId":"i","workloadRef":"w","ready":false}`},
		{"list all overlays", OverlayListRequest{}, `{}`},
		{"retire reply", RetireReply{}, `{"retired":false}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.v)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if string(b) != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, b, tt.want)
		}
	}
}

func TestWorkloadRefAlias(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{`{"tenantId":"alice","workloadRef":"ref"}`, "ref"},
		{`{"tenantId":"alice","workload":"wl"}`, "wl"},
		{`{"tenantId":"alice","workload":"wl","workloadRef":"ref"}`, "wl"},
		{`{"tenantId":"alice","workloadRef":"ref","workload":"wl"}`, "wl"},
		{`{"tenantId":"alice","workload":"","workloadRef":"ref"}`, "ref"},
		{`{"tenantId":"alice"}`, ""},
	}
	for _, tt := range tests {
		var c ClaimRequest
		if err := json.Unmarshal([]byte(tt.in), &c); err != nil {
			t.Fatalf("ClaimRequest %s: %v", tt.in, err)
		}
		if c.Workload != tt.want || c.TenantID != "alice" {
			t.Errorf("ClaimRequest %s: got %+v, want workload %q", tt.in, c, tt.want)
		}
		var r ReleaseRequest
		if err := json.Unmarshal([]byte(tt.in), &r); err != nil {
			t.Fatalf("ReleaseRequest %s: %v", tt.in, err)
		}
		if r.Workload != tt.want || r.TenantID != "alice" {
			t.Errorf("ReleaseRequest %s: got %+v, want workload %q", tt.in, r, tt.want)
		}
	}
	var c ClaimRequest
	if err := json.Unmarshal([]byte(`{"tenantId":"a","workloadRef":"w","resume":false,"requestId":"x","waitMillis":10}`), &c); err != nil {
		t.Fatal(err)
	}
	if c.Workload != "w" || c.ResumeOrDefault() || c.RequestID != "x" || c.WaitMillis != 10 {
		t.Errorf("other fields lost with alias: %+v", c)
	}
	var r ReleaseRequest
	if err := json.Unmarshal([]byte(`{"tenantId":"a","workloadRef":"w","reason":"force","force":true}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.Workload != "w" || r.Reason != ReasonForce || !r.Force {
		t.Errorf("other fields lost with alias: %+v", r)
	}
	if err := json.Unmarshal([]byte(`{"tenantId":1}`), &c); err == nil {
		t.Errorf("want type error for tenantId:1")
	}
}

func TestClaimRecordView(t *testing.T) {
	at := time.Date(2026, 4, 20, 10, 30, 0, 0, time.UTC)
	r := ClaimRecord{TenantID: "alice", Workload: "w", ID: "x", Phase: PhaseActive, InstanceID: "i",
		Endpoint: &Endpoint{Host: "h", Port: 1}, Source: SourcePool, ClaimedAt: &at, Detail: "d", Owner: "o"}
	want := ClaimView{TenantID: "alice", Workload: "w", Phase: PhaseActive, InstanceID: "i",
		Endpoint: &Endpoint{Host: "h", Port: 1}, Source: SourcePool, ClaimedAt: &at, Detail: "d"}
	if got := r.View(); !reflect.DeepEqual(got, want) {
		t.Fatalf("View() = %+v, want %+v", got, want)
	}
}
