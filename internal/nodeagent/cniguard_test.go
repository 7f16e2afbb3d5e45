package nodeagent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What containerd's libcni cached for the bed's pods, trimmed.
const (
	bridgeResult = `{"kind":"cniCacheV1","containerId":"c1","ifName":"eth0","networkName":"k8sbed","result":{"cniVersion":"1.0.0",
"interfaces":[{"mac":"22:94:ca:b1:72:5d","name":"cni0"},{"mac":"36:9c:df:4a:06:ed","name":"vetheae8ddf8"},
{"mac":"8e:4a:fa:f0:f2:50","name":"eth0","sandbox":"/var/run/netns/cni-1"}],
"ips":[{"address":"10.244.0.10/24","gateway":"10.244.0.1","interface":2}]}}`
	loopbackResult = `{"kind":"cniCacheV1","containerId":"c1","ifName":"lo","networkName":"cni-loopback","result":{"cniVersion":"1.0.0",
"interfaces":[{"name":"lo","mac":"00:00:00:00:00:00","sandbox":"/var/run/netns/cni-1"}],"ips":[{"address":"127.0.0.1/8","interface":0}]}}`
	v6Result = `{"kind":"cniCacheV1","result":{"interfaces":[{"name":"cni0"},{"mac":"36:9c:df:4a:06:ee","name":"veth00000002"},
{"mac":"8e:4a:fa:f0:f2:51","name":"eth0","sandbox":"/x"}],"ips":[{"address":"fd00::5/64","interface":2}]}}`
	// A result whose ips point past its interfaces, from a plugin that
	// wrote nonsense: never an index out of range.
	badIndex = `{"kind":"cniCacheV1","result":{"interfaces":[{"name":"veth00000003"}],"ips":[{"address":"10.0.0.1/24","interface":7}]}}`
)

func TestReadCNIResults(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"k8sbed-c1-eth0":     bridgeResult,
		"cni-loopback-c1-lo": loopbackResult,
		"k8sbed-c2-eth0":     v6Result,
		"k8sbed-c3-eth0":     badIndex,
		"k8sbed-c4-eth0":     "{not json",
		"k8sbed-c5-eth0":     `{"kind":"cniCacheV1","result":` + strings.Repeat(" ", maxCNIResult) + `{}}`,
		"k8sbed-c6-eth0.tmp": bridgeResult, // the same link again: read once
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	isVeth := func(name string) bool { return strings.HasPrefix(name, "veth") }
	ports, unguarded, err := ReadCNIResults(dir, isVeth)
	if err != nil || len(ports) != 1 || ports[0].Link != "vetheae8ddf8" || ports[0].MAC.String() != "8e:4a:fa:f0:f2:50" ||
		ports[0].Addr.String() != "10.244.0.10" || ports[0].Broadcast.String() != "10.244.0.255" {
		t.Errorf("ports = %+v (%v), want the bridge result's veth, the pod's MAC, address and subnet broadcast", ports, err)
	}
	if unguarded != 4 {
		t.Errorf("unguarded = %d, want 4 (IPv6 only, a bad index, bad JSON, too big)", unguarded)
	}
	if ports, unguarded, err := ReadCNIResults(filepath.Join(dir, "absent"), isVeth); len(ports) != 0 || unguarded != 0 || err != nil {
		t.Errorf("a missing directory: %v, %d, %v; want no pods", ports, unguarded, err)
	}
	// A directory that cannot be read is not one without pods (the guard
	// keeps its links instead of dropping them all).
	if _, _, err := ReadCNIResults(filepath.Join(dir, "k8sbed-c1-eth0"), isVeth); err == nil {
		t.Error("a path that cannot be read as a directory read as holding no pods")
	}
}
