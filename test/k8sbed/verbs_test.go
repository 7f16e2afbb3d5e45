package main

import (
	"context"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// checkClusterVerbs runs `trellis get` and `trellis exec` against the
// walkthrough left running by `trellis demo --kubernetes --keep` (its
// policy in force, the outside client's packets denied), as a user would
// after the demo, and picks the bed's context by name with --context.
func checkClusterVerbs(t *testing.T, ctx context.Context, bed *Bed, trellis func(args ...string) *exec.Cmd) {
	t.Helper()
	current, err := bed.kubectl(ctx, "config", "current-context")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := trellis(append([]string{args[0], "--kubernetes", "--context", strings.TrimSpace(current)}, args[1:]...)...).CombinedOutput()
		if err != nil {
			t.Errorf("trellis %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, c := range []struct {
		args []string
		want string // a line of the table
	}{
		{[]string{"get", "pods", "-n", "db", "-o", "wide"}, `(?m)^demo-graph-alpha-\S+ +2/2 +Running +\d+ +\S+ +10\.\S+ +k8sbed$`},
		{[]string{"get", "services", "-n", "db", "-o", "wide"}, `(?m)^demo-graph-alpha +ClusterIP +10\.\S+ +8080/TCP,9080/TCP +\S+ +app=demo-graph-alpha +10\.\S+:(8080|9080),`},
		{[]string{"get", "virtualservices", "-n", "client-allow"}, `(?m)^alpha-v2 +demo-graph-alpha\.db\.svc\.cluster\.local +True +True `},
		{[]string{"get", "networkpolicies", "-A"}, `(?m)^db +mesh-members-only +<all pods> +[1-9]\d* +0 +\S+$`},
		{[]string{"get", "namespaces", "-o", "wide"}, `(?m)^client-allow +Active +\S+ +.*trellis.io/inject=enabled`},
		{[]string{"exec", "-n", "client-allow", "client", "--", "trellis", "example", "graph-client", "health", "--http", "http://demo-graph-alpha.db.svc.cluster.local:8080"},
			`"status":"healthy"`},
	} {
		if out := run(c.args...); !regexp.MustCompile(c.want).MatchString(out) {
			t.Errorf("trellis %s --kubernetes:\n%s\nwant a line matching %s", strings.Join(c.args, " "), out, c.want)
		}
	}
	// A failing command's status and message come back.
	out, err := trellis("exec", "--kubernetes", "-n", "client-allow", "client", "--", "trellis", "example", "probe", "nowhere").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), `target "nowhere"`) {
		t.Errorf("a failing command through trellis exec --kubernetes: %v\n%s\nwant exit status 1 and its message", err, out)
	}
	out, err = trellis("get", "pods", "--kubernetes", "--context", "no-such-context").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"no-such-context"`) {
		t.Errorf("an unknown --context: %v\n%s\nwant an error naming it", err, out)
	}
}
