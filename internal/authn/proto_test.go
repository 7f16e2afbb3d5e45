package authn

import (
	"reflect"
	"testing"
)

// Every field of a rule survives the trip through the config, and so do
// the keys fetched for its jwksUri.
func TestProtoKeepsEveryField(t *testing.T) {
	in := []JWTRule{{
		Issuer: "https://issuer.example", Audiences: []string{"a", "b"}, JWKSURI: "https://issuer.example/keys",
		FromHeaders: []JWTHeader{{Name: "X-Token", Prefix: "T "}}, FromParams: []string{"t"}, FromCookies: []string{"c"},
		ForwardOriginalToken: true, OutputPayloadToHeader: "X-Payload", OutputClaimToHeaders: []ClaimToHeader{{Header: "X-Sub", Claim: "sub"}},
	}, {Issuer: "inline", JWKS: `{"keys":[]}`}}
	// A field added to the rule and forgotten in the config must fail
	// here: the rule's fields are counted.
	if n := reflect.TypeFor[JWTRule]().NumField(); n != 10 {
		t.Fatalf("JWTRule has %d fields; carry the new ones in meshpb.JwtRule and here", n)
	}
	rules, keys := FromProto(ToProto(in, map[string][]byte{"https://issuer.example/keys": []byte("K")}))
	if !reflect.DeepEqual(rules, in) {
		t.Errorf("after the config:\n%+v\nwant\n%+v", rules, in)
	}
	if string(keys("https://issuer.example/keys")) != "K" || keys("inline") != nil {
		t.Error("the fetched keys did not come through the config")
	}
}
