package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/go-logr/logr/funcr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientset "k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	meshtests "sigs.k8s.io/gateway-api/conformance/tests/mesh"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"
)

// gammaFeatures are the features Trellis claims to the suite: the Mesh
// profiles' core (Mesh, HTTPRoute, GRPCRoute) and each extended feature
// docs/traffic-management.md says Trellis supports. Together they cover
// every test of meshtests.MeshConformanceTests, so none is skipped as
// unsupported.
var gammaFeatures = []features.FeatureName{
	features.SupportMesh,
	features.SupportHTTPRoute,
	features.SupportGRPCRoute,
	// matches[].queryParams, Exact and RegularExpression.
	features.SupportMeshHTTPRouteQueryParamMatching,
	// The URLRewrite filter's path, ReplaceFullPath and ReplacePrefixMatch.
	features.SupportMeshHTTPRouteRewritePath,
	// The RequestRedirect filter's scheme, port and path, and its status
	// codes 303, 307 and 308 (301 and 302 are core).
	features.SupportMeshHTTPRouteSchemeRedirect,
	features.SupportMeshHTTPRouteRedirectPort,
	features.SupportMeshHTTPRouteRedirectPath,
	features.SupportHTTPRoute303RedirectStatusCode,
	features.SupportHTTPRoute307RedirectStatusCode,
	features.SupportHTTPRoute308RedirectStatusCode,
	// backendRefs[].filters: RequestHeaderModifier (and
	// ResponseHeaderModifier).
	features.SupportMeshHTTPRouteBackendRequestHeaderModification,
	// rules[].name: accepted and kept as written.
	features.SupportMeshHTTPRouteNamedRouteRule,
	// parentRefs[].port: a route on one port of its Service.
	features.SupportHTTPRouteParentRefPort,
	// The ResponseHeaderModifier filter.
	features.SupportHTTPRouteResponseHeaderModification,
	// The client's sidecar picks a Service's routes by the address the
	// request was sent to (the ClusterIP and port, from SO_ORIGINAL_DST;
	// internal/proxy/outbound.go), never by its Host: hostnames are
	// ignored, as GEP-1294 says.
	features.SupportMeshClusterIPMatching,
	// A route in another namespace than its Service's applies to the
	// clients of its own namespace only.
	features.SupportMeshConsumerRoute,
}

// gammaEchoImage is the bed's echo backend (workloads/gammaecho), which
// TestGAMMAConformance loads; the suite's manifests are rewritten to it.
const gammaEchoImage = "trellis.local/test/gammaecho:1"

// gammaResult is one conformance test's outcome, as the suite's Hook saw
// it. Result is "passed", "failed" or "skipped"; Note says why a test was
// skipped.
type gammaResult struct {
	Test   string `json:"test"`
	Result string `json:"result"`
	Note   string `json:"note,omitempty"`
}

// TestGAMMASuiteRun is the Gateway API conformance suite's Mesh profile
// (MESH-HTTP and MESH-GRPC) against the cluster of $KUBECONFIG, where
// Trellis and the Gateway API's CRDs are installed and gammaEchoImage is
// loaded. TestGAMMAConformance runs it in a process of its own (see
// there why); it skips unless TRELLIS_GAMMA_SUITE=1. It writes the
// suite's report, with a table of the tests' results, to
// $TRELLIS_CONFORMANCE_REPORT, and each result as a JSON line to
// $TRELLIS_GAMMA_RESULTS (if set) as soon as its test ends.
// TRELLIS_GAMMA_CLEANUP_BASE=false keeps the suite's namespaces and echo
// pods afterwards. It runs from test/k8sbed (it finds the suite's
// manifests with `go list -m`). Against a cluster prepared as
// TestGAMMAConformance prepares the bed, one test:
//
//	TRELLIS_GAMMA_SUITE=1 KUBECONFIG=... go test -run 'TestGAMMASuiteRun/gamma/MeshPorts$' -v .
func TestGAMMASuiteRun(t *testing.T) {
	if os.Getenv("TRELLIS_GAMMA_SUITE") != "1" {
		t.Skip("the conformance suite itself, run by TestGAMMAConformance: set TRELLIS_GAMMA_SUITE=1 and KUBECONFIG to run it against a cluster")
	}
	rec, err := newGAMMARecorder(os.Getenv("TRELLIS_GAMMA_RESULTS"))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.close()
	opts := gammaOptions(t)
	opts.Hook = rec.hook
	s, err := suite.NewConformanceTestSuite(opts)
	if err != nil {
		t.Fatalf("suite.NewConformanceTestSuite: %v", err)
	}
	// Setup's cleanup (the echo namespaces) belongs to this test; Run's,
	// which ends the run so that Report may be called, to the subtest.
	s.Setup(t, meshtests.MeshConformanceTests)
	t.Run("gamma", func(t *testing.T) {
		if err := s.Run(t, meshtests.MeshConformanceTests); err != nil {
			t.Fatal(err)
		}
	})
	if err := rec.err(); err != nil {
		t.Errorf("writing the results: %v", err)
	}
	report, err := s.Report()
	if err != nil {
		t.Fatalf("Report() = %v", err)
	}
	doc, err := yaml.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	table := gammaTable(rec.list())
	header := fmt.Sprintf("Gateway API %s conformance, Mesh profile: %s %s\n\n%s", report.GatewayAPIVersion,
		report.Project, report.Version, table)
	path := gammaReportPath()
	// The table as YAML comments: the file stays the suite's report.
	commented := "# " + strings.ReplaceAll(strings.TrimRight(header, "\n"), "\n", "\n# ") + "\n"
	if err := os.WriteFile(path, []byte(commented+string(doc)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report written to %s\n%s", path, table)
}

// gammaReportPath is where the suite's report goes:
// $TRELLIS_CONFORMANCE_REPORT, by default
// $TMPDIR/trellis-gamma-conformance.yaml.
func gammaReportPath() string {
	return envOr("TRELLIS_CONFORMANCE_REPORT", filepath.Join(os.TempDir(), "trellis-gamma-conformance.yaml"))
}

// gammaOptions are the suite's options for the cluster of $KUBECONFIG.
func gammaOptions(t *testing.T) suite.ConformanceOptions {
	t.Helper()
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		t.Fatal("KUBECONFIG is not set: give the kubeconfig of the cluster to test")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", kubeconfig, err)
	}
	// Parallel cases each exec into an echo pod about once a second:
	// client-go's default of 5 a second would hold them back.
	cfg.QPS, cfg.Burst = 20, 40
	// controller-runtime warns, with a stack, when nothing takes its logs.
	ctrllog.SetLogger(funcr.New(func(prefix, args string) { log.Println("controller-runtime:", prefix, args) }, funcr.Options{}))

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, gatewayv1.Install} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	// The suite makes a client of its own for each test, with these.
	clientOptions := client.Options{Scheme: scheme}
	c, err := client.New(cfg, clientOptions)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := clientset.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	timeouts := config.DefaultTimeoutConfig()
	// The bed shares 2 cores with whatever else runs: a route's status
	// and the sidecars' config take longer to settle than the suite's 30s
	// (which a report submitted upstream must keep).
	timeouts.MaxTimeToConsistency = 90 * time.Second

	return suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			// Injection: the suite labels each namespace it creates.
			NamespaceLabels:      map[string]string{"trellis.io/inject": "enabled"},
			CleanupBaseResources: envOr("TRELLIS_GAMMA_CLEANUP_BASE", "true") != "false",
			// Each test's routes go before the next test's come: two
			// tests' routes on one Service would mix.
			CleanupTestResources: true,
			SupportedFeatures:    gammaFeatures,
			TimeoutConfig:        timeouts,
			ConformanceProfiles:  []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName},
			Implementation: confv1.Implementation{
				Organization: "trellis-mesh",
				Project:      "trellis",
				URL:          "https://github.com/trellis-mesh/trellis",
				Version:      gitVersion(),
				Contact:      []string{"https://github.com/trellis-mesh/trellis/issues"},
			},
		},
		Client:        c,
		ClientOptions: clientOptions,
		Clientset:     cs,
		RestConfig:    cfg,
		// One FS: the suite concatenates a manifest's copies in every FS
		// it is given.
		ManifestFS: []fs.FS{gammaManifests(t)},
	}
}

// gitVersion is `git describe` of the checkout, or "dev".
func gitVersion() string {
	out, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "dev"
}

// upstreamEchoImage is the echo image the suite's mesh manifests name.
var upstreamEchoImage = regexp.MustCompile(`registry\.k8s\.io/gateway-api/echo-advanced:[\w.-]+`)

// gammaManifests is the conformance module's directory, the one this
// test is built with, with the suite's echo image replaced by
// gammaEchoImage (never pulled: the bed has no registry).
func gammaManifests(t *testing.T) fs.FS {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api/conformance").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("go list -m sigs.k8s.io/gateway-api/conformance: %v (%q); run from test/k8sbed, with the module downloaded", err, out)
	}
	fsys := echoImageFS{os.DirFS(dir)}
	mesh, err := fs.ReadFile(fsys, "mesh/manifests.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mesh), gammaEchoImage) {
		t.Fatalf("the suite's mesh/manifests.yaml in %s names no image matching %s any more: update upstreamEchoImage", dir, upstreamEchoImage)
	}
	return fsys
}

// echoImageFS reads the suite's manifests with their echo pods on
// gammaEchoImage, never pulled.
type echoImageFS struct{ fs.FS }

func (f echoImageFS) ReadFile(name string) ([]byte, error) {
	data, err := fs.ReadFile(f.FS, name)
	if err != nil {
		return nil, err
	}
	data = upstreamEchoImage.ReplaceAll(data, []byte(gammaEchoImage))
	return []byte(strings.ReplaceAll(string(data), "imagePullPolicy: IfNotPresent", "imagePullPolicy: Never")), nil
}

// Open opens a file rewritten as ReadFile reads it, and a directory as
// it is.
func (f echoImageFS) Open(name string) (fs.File, error) {
	data, err := f.ReadFile(name)
	if err != nil {
		return f.FS.Open(name)
	}
	return fstest.MapFS{name: &fstest.MapFile{Data: data, Mode: 0o444}}.Open(name)
}

// gammaRecorder keeps the results the suite's Hook reports, and appends
// each to a file as it comes, so that a run cut short still tells what
// it did.
type gammaRecorder struct {
	mu       sync.Mutex
	results  []gammaResult
	out      *os.File // nil: no file
	writeErr error    // the first failed write
}

// newGAMMARecorder appends to path; "" records in memory only.
func newGAMMARecorder(path string) (*gammaRecorder, error) {
	r := &gammaRecorder{}
	if path == "" {
		return r, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("results file: %w", err)
	}
	r.out = f
	return r, nil
}

// hook is the suite's Hook: it runs as each test's last cleanup, when
// its outcome is final.
func (r *gammaRecorder) hook(t *testing.T, test suite.ConformanceTest, s *suite.ConformanceTestSuite) {
	res := gammaResult{Test: test.ShortName, Result: "passed"}
	switch {
	case t.Failed():
		res.Result = "failed"
	case t.Skipped():
		res.Result, res.Note = "skipped", "skipped"
		var missing []string
		for _, f := range test.Features {
			if !s.SupportedFeatures.Has(f) {
				missing = append(missing, string(f))
			}
		}
		if len(missing) > 0 {
			res.Note = "not supported: " + strings.Join(missing, ", ")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results = append(r.results, res)
	if r.out != nil && r.writeErr == nil {
		line, _ := json.Marshal(res)
		_, r.writeErr = r.out.Write(append(line, '\n'))
	}
}

func (r *gammaRecorder) list() []gammaResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]gammaResult(nil), r.results...)
}

func (r *gammaRecorder) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writeErr
}

func (r *gammaRecorder) close() {
	if r.out != nil {
		r.out.Close()
	}
}

// gammaTable is results as a plain table, in the order the tests ran,
// with a count of each outcome.
func gammaTable(results []gammaResult) string {
	var b strings.Builder
	count := map[string]int{}
	fmt.Fprintf(&b, "%-46s %s\n", "TEST", "RESULT")
	for _, r := range results {
		count[r.Result]++
		line := fmt.Sprintf("%-46s %s", r.Test, r.Result)
		if r.Note != "" && r.Note != r.Result {
			line += " (" + r.Note + ")"
		}
		b.WriteString(line + "\n")
	}
	fmt.Fprintf(&b, "\n%d passed, %d failed, %d skipped\n", count["passed"], count["failed"], count["skipped"])
	return b.String()
}
