package localmesh

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestCheckResource(t *testing.T) {
	for _, tt := range []struct {
		r    Resource
		want string // "" means valid
	}{
		{Resource{Kind: resNetns, Name: "trellis-default.web-0"}, ""},
		{Resource{Kind: resHostsDir, Name: "trellis-default.web-0"}, ""},
		{Resource{Kind: resLink, Name: "tv0123abcd"}, ""},
		{Resource{Kind: resLink, Name: strings.Repeat("l", 15)}, ""},
		{Resource{Kind: resNFTable, Name: "trellis-guard"}, ""},
		{Resource{Kind: resSysctl, Name: meshSysctls[0], Old: "0"}, ""},
		{Resource{Kind: "file", Name: "x"}, "not a kind of resource trellis records"},
		{Resource{Kind: resNetns, Name: ""}, "empty name"},
		{Resource{Kind: resNetns, Name: "."}, "not a plain name"},
		{Resource{Kind: resHostsDir, Name: ".."}, "not a plain name"},
		{Resource{Kind: resNetns, Name: "../../etc"}, "not a plain name"},
		{Resource{Kind: resNetns, Name: "a\x00b"}, "not a plain name"},
		{Resource{Kind: resNetns, Name: strings.Repeat("n", 256)}, "longer than 255 bytes"},
		{Resource{Kind: resLink, Name: "a/b"}, "not a plain name"},
		{Resource{Kind: resLink, Name: strings.Repeat("l", 16)}, "longer than 15 bytes"},
		{Resource{Kind: resNFTable, Name: "ip filter"}, "not a plain name"},
		{Resource{Kind: resNFTable, Name: strings.Repeat("t", 256)}, "longer than 255 bytes"},
		{Resource{Kind: resSysctl, Name: "/etc/passwd", Old: "0"}, "not a sysctl trellis sets"},
		{Resource{Kind: resSysctl, Name: "/proc/sys/net/ipv4/../ipv4/ip_forward", Old: "0"}, "not a sysctl trellis sets"},
		{Resource{Kind: resSysctl, Name: meshSysctls[0], Old: ""}, "is not a decimal integer"},
		{Resource{Kind: resSysctl, Name: meshSysctls[0], Old: "1\n0"}, "is not a decimal integer"},
	} {
		err := checkResource(tt.r)
		if tt.want == "" {
			if err != nil {
				t.Errorf("checkResource(%+v) = %v, want nil", tt.r, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "ledger entry "+tt.r.Kind) {
			t.Errorf("checkResource(%+v) = %v, want an error naming the entry and saying %q", tt.r, err, tt.want)
		}
	}
}

// Clean-up runs as root: a ledger entry trellis could not have written is
// reported and left alone, and the others are still undone.
func TestUndoAllSkipsInvalidEntries(t *testing.T) {
	dir := t.TempDir()
	victim := victimFile(t)
	victimDir := filepath.Dir(victim)
	viaRun, err := filepath.Rel(netnsRunDir, victim)
	if err != nil {
		t.Fatal(err)
	}
	viaEtc, err := filepath.Rel(netnsEtcDir, victimDir)
	if err != nil {
		t.Fatal(err)
	}
	bad := []Resource{
		{Kind: resSysctl, Name: victim, Old: "0"},
		{Kind: resNetns, Name: viaRun},
		{Kind: resHostsDir, Name: viaEtc},
		{Kind: resLink, Name: "lo/x"},
		{Kind: "file", Name: victim},
	}
	// A valid entry for something that is not there: undone (a no-op) and
	// removed from the ledger.
	good := Resource{Kind: resHostsDir, Name: "trellis-test.does-not-exist"}
	data, err := json.Marshal(append(append([]Resource{}, bad...), good))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ledgerFile), data, 0o600); err != nil {
		t.Fatal(err)
	}

	removed, err := Cleanup(dir)
	if len(removed) != 1 || removed[0] != good {
		t.Errorf("Cleanup() removed %+v, want only %+v", removed, good)
	}
	for _, r := range bad {
		want := "ledger entry " + r.Kind + " " + strconv.Quote(r.Name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Cleanup() error = %v, want it to report %s", err, want)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "remove the entry from "+filepath.Join(dir, ledgerFile)+" by hand") {
		t.Errorf("Cleanup() error = %v, want advice to edit the ledger", err)
	}
	checkVictim(t, victim)
	l, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Items(); len(got) != len(bad) {
		t.Errorf("ledger after Cleanup() = %+v, want the %d invalid entries kept", got, len(bad))
	}
	// undo itself refuses them too.
	for _, r := range bad {
		if err := undo(r); err == nil {
			t.Errorf("undo(%+v) = nil, want it refused", r)
		}
	}
	checkVictim(t, victim)
}
