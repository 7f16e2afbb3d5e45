package localmesh

import (
	"strings"
	"testing"
)

func TestParseSandboxRefusesHostIDs(t *testing.T) {
	tests := []struct {
		name, arg, want string
	}{
		{"view", `{"netns":"n","view":{"root":"/r"},"idBase":2147483648,"uid":1000}`, ""},
		{"join", `{"netns":"n","join":42,"idBase":2147549184}`, ""},
		{"neither", `{"netns":"n","idBase":2147483648}`, "exactly one of view and join"},
		{"both", `{"netns":"n","join":1,"view":{},"idBase":2147483648}`, "exactly one of view and join"},
		{"no netns", `{"join":1,"idBase":2147483648}`, "exactly one of view and join"},
		{"host root", `{"netns":"n","join":1,"idBase":0}`, "id base 0 is not a pod's range"},
		{"unaligned", `{"netns":"n","join":1,"idBase":2147483649}`, "is not a pod's range"},
		{"uid past the range", `{"netns":"n","join":1,"idBase":2147483648,"uid":65536}`, "outside the pod's 0-65535"},
		{"not JSON", `netns`, "sandbox: invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSandbox(tt.arg)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("ParseSandbox(%s) = %v, want %q", tt.arg, err, tt.want)
			}
		})
	}
}

func TestIDRangesAreDisjoint(t *testing.T) {
	var a idRanges
	first, _ := a.allocate()
	second, _ := a.allocate()
	if first != idRangeStart || second != idRangeStart+podIDs {
		t.Fatalf("allocate() = %d, %d; want %d, %d", first, second, idRangeStart, idRangeStart+podIDs)
	}
	a.release(first)
	if again, _ := a.allocate(); again != first {
		t.Errorf("after release, allocate() = %d, want the freed %d", again, first)
	}
	for slot := range uint32(maxIDRanges - 1) {
		a.used[slot] = true
	}
	last, err := a.allocate()
	if err != nil {
		t.Fatal(err)
	}
	if end := uint64(last) + podIDs - 1; end >= 1<<32-1 {
		t.Errorf("the last range ends at uid %d, which is not a valid uid", end)
	}
	if _, err := a.allocate(); err == nil {
		t.Error("allocate() past the last range succeeded")
	}
}

func TestWorkingDirBoundUnlessShown(t *testing.T) {
	for dir, covered := range map[string]bool{"/": true, "/usr/share": true, "/usr": true, "/etc/x": true,
		"/usrx": false, "/root/project": false, "/tmp/w": false} {
		if got := coveredBySystemDirs(dir); got != covered {
			t.Errorf("coveredBySystemDirs(%q) = %v, want %v", dir, got, covered)
		}
	}
}
