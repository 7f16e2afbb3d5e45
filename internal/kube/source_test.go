package kube

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// The endpoints of a Service without a selector are what its slices list:
// IPv4 addresses, TCP ports by name, ready unless said otherwise.
func TestListedEndpoints(t *testing.T) {
	name, udp, port, dns := "http", corev1.ProtocolUDP, int32(8080), int32(53)
	no := false
	got := ListedEndpoints([]*discoveryv1.EndpointSlice{
		{AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}, {Name: &[]string{"dns"}[0], Port: &dns, Protocol: &udp}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.0.1"}},
				{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
			}},
		{AddressType: discoveryv1.AddressTypeIPv6, Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1"}}}},
	})
	ports := map[string]int32{"http": 8080}
	want := []catalog.ServiceEndpoint{
		{IP: netip.MustParseAddr("10.1.0.1"), Ready: true, Ports: ports},
		{IP: netip.MustParseAddr("10.1.0.2"), Ready: false, Ports: ports},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ListedEndpoints = %+v, want %+v", got, want)
	}
}
