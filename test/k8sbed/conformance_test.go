package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	meshtests "sigs.k8s.io/gateway-api/conformance/tests/mesh"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/consts"
)

// knownGAMMAFailures are the tests of the suite's Mesh profile Trellis is
// known to fail, by ShortName, each with why: TestGAMMAConformance fails
// for a failure that is not here, and says when one here passes.
//
// None: the profile's 22 tests pass (docs/traffic-management.md).
var knownGAMMAFailures = map[string]string{}

// TestGAMMAConformance runs the Gateway API conformance suite's Mesh
// profile (GAMMA; sigs.k8s.io/gateway-api/conformance at this module's
// version, MESH-HTTP and MESH-GRPC) against Trellis on a fresh bed, with
// workloads/gammaecho as the suite's echo backend, and writes the suite's
// report with a table of the tests' results to
// $TRELLIS_CONFORMANCE_REPORT (default
// $TMPDIR/trellis-gamma-conformance.yaml), its whole output beside it
// (.log).
//
// The suite runs as subtests of the *testing.T it is given, and a failed
// subtest fails its parent: run in this process, any failure of the
// suite would fail this test, and the suite's score could not be told
// from a broken harness. So this test runs the suite in a process of its
// own: this test binary again, with only TestGAMMASuiteRun, under
// `go tool test2json`. That process's failures stay its own; its Hook
// writes each test's result to a file as the test ends, and its output,
// read as JSON events, gives each test's notable lines and progress here.
// This test then passes when the suite ran to its report and every test
// failed is in knownGAMMAFailures.
//
// It takes about 2 minutes when every test passes, at most 45, and skips when go test's -timeout leaves
// less: run it alone, with -timeout 60m.
func TestGAMMAConformance(t *testing.T) {
	if gatewayAPIVersion != consts.BundleVersion {
		t.Fatalf("the bed installs the Gateway API's CRDs of %s, the suite is of %s: it refuses to run on other CRDs; make gatewayAPIVersion and go.mod agree",
			gatewayAPIVersion, consts.BundleVersion)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bed makes a network namespace, mounts and cgroups")
	}
	// Run alone: the package's tests together (scripts/test.sh gives
	// them 45m) leave it too little before go test's -timeout panics.
	const limit = 45 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d) < limit+time.Minute {
		t.Skipf("needs %s before go test's -timeout, has %s: run it alone with -timeout 60m (README.md)", limit+time.Minute, time.Until(d).Round(time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	bed := startBed(t, ctx)
	step := stepper(t)
	// Before Trellis: its control plane watches the routes from the start.
	installGatewayAPI(t, ctx, bed)
	step("Gateway API CRDs installed")
	trellis := buildTrellis(t, ctx, bed)
	loadGAMMAEcho(t, ctx, bed)
	step("images loaded")

	installTrellis(t, ctx, bed, trellis)
	step("installed")
	t.Cleanup(func() {
		if t.Failed() {
			logGAMMADiagnostics(t, bed)
		}
	})

	report, err := filepath.Abs(gammaReportPath())
	if err != nil {
		t.Fatal(err)
	}
	run := runGAMMASuite(t, ctx, bed, report)
	step("suite ran")
	judgeGAMMA(t, run)
}

// loadGAMMAEcho builds workloads/gammaecho and loads it as gammaEchoImage,
// at the paths of the echo image it stands in for: the server its
// entrypoint, the client the command the suite execs.
func loadGAMMAEcho(t *testing.T, ctx context.Context, bed *Bed) {
	t.Helper()
	bin := buildWorkload(t, ctx, "gammaecho")
	if err := bed.LoadImageAt(ctx, gammaEchoImage, bin, []string{"/usr/local/bin/server", "/usr/local/bin/client"}, nil); err != nil {
		t.Fatal(err)
	}
}

// gammaRun is what one run of TestGAMMASuiteRun left.
type gammaRun struct {
	results []gammaResult // in the order the tests ended
	// notable holds the last notable lines of each test's output, by
	// ShortName; "" holds the suite's own (its setup's).
	notable     map[string][]string
	exit        error  // how its process ended: any failed test makes it non-nil
	report, log string // the report's path, and the whole output's
	wroteReport bool
}

// gammaTestPrefix is the name of TestGAMMASuiteRun's subtest that runs
// the suite, whose subtests are the conformance tests.
const gammaTestPrefix = "TestGAMMASuiteRun/gamma/"

// runGAMMASuite runs TestGAMMASuiteRun against the bed in a process of
// its own (see TestGAMMAConformance), logging each test's outcome as it
// comes, and returns what it left. The process is bounded to end well
// before ctx does.
func runGAMMASuite(t *testing.T, ctx context.Context, bed *Bed, report string) gammaRun {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	deadline, _ := ctx.Deadline()
	// Time left after the suite: to judge, log and take the bed down.
	timeout := (time.Until(deadline) - 4*time.Minute).Round(time.Second)
	if timeout < 10*time.Minute {
		t.Fatalf("%s left for the suite, want at least 10m", timeout)
	}
	if err := os.Remove(report); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	run := gammaRun{report: report, log: strings.TrimSuffix(report, filepath.Ext(report)) + ".log", notable: map[string][]string{}}
	logFile, err := os.Create(run.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	results := filepath.Join(t.TempDir(), "results.jsonl")

	// Most tests run their cases in parallel, by default GOMAXPROCS (2
	// here) at a time, and a failing case takes MaxTimeToConsistency:
	// -test.parallel=8 keeps a test of 15 failing cases to 2 rounds.
	cmd := exec.CommandContext(ctx, "go", "tool", "test2json", "-t", self, "-test.v=test2json",
		"-test.run=^TestGAMMASuiteRun$", "-test.timeout="+timeout.String(), "-test.parallel=8")
	cmd.Env = append(os.Environ(), "TRELLIS_GAMMA_SUITE=1", "KUBECONFIG="+bed.Kubeconfig(),
		"TRELLIS_CONFORMANCE_REPORT="+report, "TRELLIS_GAMMA_RESULTS="+results,
		// Keep the echo pods for logGAMMADiagnostics: the bed goes anyway.
		"TRELLIS_GAMMA_CLEANUP_BASE=false")
	// test2json and the suite in a process group of their own, killed
	// together when ctx ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 30 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the suite: %v", err)
	}
	readGAMMAEvents(t, stdout, logFile, &run)
	if run.exit = cmd.Wait(); stderr.Len() > 0 {
		run.exit = fmt.Errorf("%v; stderr: %s", run.exit, strings.TrimSpace(stderr.String()))
	}
	if run.results, err = readGAMMAResults(results); err != nil {
		t.Errorf("the suite's results: %v", err)
	}
	_, err = os.Stat(report)
	run.wroteReport = err == nil
	return run
}

// testEvent is one line of test2json's output.
type testEvent struct {
	Action string
	Test   string
	Output string
}

// notableLine matches the lines of a test's output that say what went
// wrong: a request's last mismatch, a timeout, a failed assertion.
var notableLine = regexp.MustCompile(`not ready yet|timeout while waiting|Error Trace:|Error:|Messages:|panic|FAIL`)

// readGAMMAEvents reads the suite's test2json events until they end: it
// writes their output to log, keeps each test's notable lines in run, and
// logs each conformance test's outcome.
func readGAMMAEvents(t *testing.T, r io.Reader, log io.Writer, run *gammaRun) {
	t.Helper()
	const keep, width = 12, 600
	dec := json.NewDecoder(r)
	ended := map[string]bool{} // test2json may report a parallel test's end twice
	for {
		var ev testEvent
		if err := dec.Decode(&ev); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("reading the suite's events: %v", err)
				_, _ = io.Copy(log, io.MultiReader(dec.Buffered(), r))
			}
			return
		}
		_, _ = io.WriteString(log, ev.Output)
		name := ""
		if rest, ok := strings.CutPrefix(ev.Test, gammaTestPrefix); ok {
			name, _, _ = strings.Cut(rest, "/")
		}
		switch ev.Action {
		case "output":
			if line := strings.TrimSpace(ev.Output); notableLine.MatchString(line) {
				if len(line) > width {
					line = line[:width] + "…"
				}
				lines := append(run.notable[name], line)
				run.notable[name] = lines[max(0, len(lines)-keep):]
			}
		case "pass", "fail", "skip":
			if name != "" && ev.Test == gammaTestPrefix+name && !ended[name] {
				ended[name] = true
				t.Logf("%s: %s", name, ev.Action)
			}
		}
	}
}

// readGAMMAResults reads the results TestGAMMASuiteRun's Hook wrote, one
// JSON object a line; none when it wrote no file.
func readGAMMAResults(path string) ([]gammaResult, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var results []gammaResult
	for line := range strings.Lines(string(data)) {
		var r gammaResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return results, fmt.Errorf("%s: line %q: %w", path, line, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// judgeGAMMA logs run's table and fails the test when the suite did not
// run to its report, or a test of the Mesh profile has no result or
// failed without being in knownGAMMAFailures.
func judgeGAMMA(t *testing.T, run gammaRun) {
	t.Helper()
	t.Logf("Gateway API conformance, Mesh profile (report %s, whole output %s):\n%s", run.report, run.log, gammaTable(run.results))
	if !run.wroteReport {
		t.Errorf("the suite wrote no report: it did not finish (its process ended: %v); its last notable lines:\n%s",
			run.exit, indentLines(run.notable[""]))
	}
	got := map[string]gammaResult{}
	for _, r := range run.results {
		got[r.Test] = r
	}
	var missing []string
	for _, test := range meshtests.MeshConformanceTests {
		name := test.ShortName
		r, ran := got[name]
		why, known := knownGAMMAFailures[name]
		switch {
		case !ran:
			missing = append(missing, name)
		case r.Result == "failed" && known:
			t.Logf("KNOWN FAILURE %s (%s); its last notable lines:\n%s", name, why, indentLines(run.notable[name]))
		case r.Result == "failed":
			t.Errorf("FAILED %s, not in knownGAMMAFailures; its last notable lines:\n%s", name, indentLines(run.notable[name]))
		case known:
			t.Logf("%s is in knownGAMMAFailures but %s: take it out", name, r.Result)
		}
	}
	if len(missing) > 0 {
		t.Errorf("no result for %d of the %d tests (the suite did not get to them): %s",
			len(missing), len(meshtests.MeshConformanceTests), strings.Join(missing, ", "))
	}
	for name := range knownGAMMAFailures {
		if !slices.ContainsFunc(meshtests.MeshConformanceTests, func(c suite.ConformanceTest) bool { return c.ShortName == name }) {
			t.Errorf("knownGAMMAFailures names %q, no test of the suite's Mesh profile", name)
		}
	}
}

func indentLines(lines []string) string {
	if len(lines) == 0 {
		return "    (none)"
	}
	return "    " + strings.Join(lines, "\n    ")
}

// logGAMMADiagnostics logs what the control plane and the suite's echo
// pods were doing, for a failed run.
func logGAMMADiagnostics(t *testing.T, bed *Bed) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmds := [][]string{{"-n", "trellis-system", "logs", "deploy/trellis-control", "--tail=80"}}
	for _, ns := range []string{suite.MeshNamespace, suite.MeshConsumerNamespace} {
		cmds = append(cmds,
			[]string{"-n", ns, "get", "pods", "-o", "wide"},
			[]string{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
			[]string{"-n", ns, "logs", "-l", "app=echo", "-c", "trellis-proxy", "--prefix", "--tail=25"})
	}
	for _, args := range cmds {
		out, _ := bed.kubectl(ctx, args...)
		t.Logf("kubectl %s:\n%.6000s", strings.Join(args, " "), out)
	}
}
