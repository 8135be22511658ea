package devstack_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/http"
	"testing"
	"time"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/localkube"
)

func endpointURL(v messages.ClaimView, path string) string {
	return fmt.Sprintf("http://%s:%d%s", v.Endpoint.Host, v.Endpoint.Port, path)
}

func putFile(t *testing.T, url string, data []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, url, bytes.NewReader(data))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %d", url, resp.StatusCode)
	}
}

func getFile(t *testing.T, url string) (int, []byte) {
	t.Helper()
	status, b, err := httpGet(url)
	if err != nil {
		t.Fatal(err)
	}
	return status, b
}

func claimREST(t *testing.T, tenant, body string) messages.ClaimView {
	t.Helper()
	var v messages.ClaimView
	if code := postJSON(t, rest+"/api/v1/tenants/"+tenant+"/claim", body, &v); code != 201 || v.Phase != messages.PhaseActive {
		t.Fatalf("claim %s %s: %d %+v", tenant, body, code, v)
	}
	return v
}

func releaseREST(t *testing.T, tenant, workload string) messages.ClaimView {
	t.Helper()
	var v messages.ClaimView
	if code := postJSON(t, rest+"/api/v1/tenants/"+tenant+"/release", `{"workload":"`+workload+`"}`, &v); code != 200 || v.Phase != messages.PhaseReleased {
		t.Fatalf("release %s: %d %+v", tenant, code, v)
	}
	return v
}

func snapshots(t *testing.T, path string) []messages.Snapshot {
	t.Helper()
	var list []messages.Snapshot
	if code := getJSON(t, rest+path, &list); code != 200 {
		t.Fatalf("GET %s: %d", path, code)
	}
	return list
}

func setPoolSize(t *testing.T, pool, workload string, size int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, rest+"/api/v1/pools/"+pool,
		bytes.NewBufferString(fmt.Sprintf(`{"name":%q,"spec":{"workloadRef":%q,"size":%d,"maxFillConcurrency":3}}`, pool, workload, size)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("resize pool %s: %v %v", pool, resp, err)
	}
	resp.Body.Close()
	eventually(t, "pool "+pool+" at size", time.Minute, func() bool {
		var p struct {
			Status struct{ Ready, Warming int } `json:"status"`
		}
		return getJSON(t, rest+"/api/v1/pools/"+pool, &p) == 200 && p.Status.Ready == size && p.Status.Warming == 0
	})
}

// TestOverlaysEndToEnd: a tenant's data survives hibernation through pool+data and cold+data,
// destroy forgets it, and resume:false starts clean while keeping the stored versions.
func TestOverlaysEndToEnd(t *testing.T) {
	root, err := localkube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	startStack(t, root, t.TempDir())
	setPoolSize(t, "demo", "demo", 3)

	data := make([]byte, 256<<10)
	_, _ = rand.Read(data)

	first := claimREST(t, "olive", `{"workload":"demo"}`)
	if first.Source != messages.SourcePool {
		t.Fatalf("first claim source %s, want pool", first.Source)
	}
	putFile(t, endpointURL(first, "/files/data/notes.bin"), data)
	if rel := releaseREST(t, "olive", "demo"); rel.Detail == "" {
		t.Errorf("release detail empty: %+v", rel)
	}
	list := snapshots(t, "/api/v1/workloads/demo/snapshots")
	if len(list) == 0 || list[0].TenantID != "olive" || list[0].Generation != 1 || list[0].SHA256 == "" {
		t.Fatalf("snapshots after hibernate: %+v", list)
	}

	// Pool not empty: pool+data with the same bytes.
	again := claimREST(t, "olive", `{"workload":"demo"}`)
	if again.Source != messages.SourcePoolData {
		t.Fatalf("second claim source %s, want pool+data", again.Source)
	}
	if code, got := getFile(t, endpointURL(again, "/files/data/notes.bin")); code != 200 || !bytes.Equal(got, data) {
		t.Fatalf("pool+data read back %d, %d bytes (want %d equal bytes)", code, len(got), len(data))
	}
	releaseREST(t, "olive", "demo")

	// Pool empty: cold+data with the same bytes.
	setPoolSize(t, "demo", "demo", 0)
	cold := claimREST(t, "olive", `{"workload":"demo"}`)
	if cold.Source != messages.SourceColdData {
		t.Fatalf("cold claim source %s, want cold+data", cold.Source)
	}
	if code, got := getFile(t, endpointURL(cold, "/files/data/notes.bin")); code != 200 || !bytes.Equal(got, data) {
		t.Fatalf("cold+data read back %d, %d bytes", code, len(got))
	}
	releaseREST(t, "olive", "demo")
	before := len(snapshots(t, "/api/v1/workloads/demo/snapshots"))

	// resume:false starts clean and keeps what was stored.
	clean := claimREST(t, "olive", `{"workload":"demo","resume":false}`)
	if clean.Source != messages.SourceCold {
		t.Fatalf("resume:false source %s, want cold", clean.Source)
	}
	if code, _ := getFile(t, endpointURL(clean, "/files/data/notes.bin")); code != 404 {
		t.Fatalf("resume:false sees old data: %d", code)
	}
	releaseREST(t, "olive", "demo")
	after := snapshots(t, "/api/v1/workloads/demo/snapshots")
	if len(after) < before || len(after) == 0 {
		t.Fatalf("resume:false lost stored versions: %d before, %d after", before, len(after))
	}
	kept := false
	for _, s := range after {
		kept = kept || s.Generation < after[0].Generation
	}
	if !kept {
		t.Errorf("older generations not kept: %+v", after)
	}

	// destroy: the overlay is deleted with the instance, and the next claim has no data.
	var created any
	if code := postJSON(t, rest+"/api/v1/workloads", `{"name":"scratch","spec":{"version":"1","image":{"ref":"demo:1"},
		"resources":{"vcpus":1,"memoryMb":64,"diskGb":0},"network":{"expose":[{"guest":8080}]},
		"filesystem":{"overlayDirs":["/data"]},"idle":{"action":"destroy"},
		"health":{"intervalSeconds":1,"unhealthyThreshold":3,"httpGet":{"path":"/health","port":8080}}}}`, &created); code != 201 {
		t.Fatalf("create workload scratch: %d %v", code, created)
	}
	d := claimREST(t, "olive", `{"workload":"scratch"}`)
	putFile(t, endpointURL(d, "/files/data/tmp.bin"), data[:1024])
	releaseREST(t, "olive", "scratch")
	if list := snapshots(t, "/api/v1/workloads/scratch/snapshots"); len(list) != 0 {
		t.Fatalf("destroy left snapshots: %+v", list)
	}
	d2 := claimREST(t, "olive", `{"workload":"scratch"}`)
	if d2.Source != messages.SourceCold {
		t.Fatalf("claim after destroy: source %s, want cold", d2.Source)
	}
	if code, _ := getFile(t, endpointURL(d2, "/files/data/tmp.bin")); code != 404 {
		t.Fatalf("data survived destroy: %d", code)
	}
}
