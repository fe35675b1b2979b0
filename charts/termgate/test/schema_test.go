package charttest

import (
	"strings"
	"testing"
)

// Values that cannot work are refused before anything renders, each with a
// message that names the value: unknown keys and bad values by
// values.schema.json, impossible combinations by templates/validate.yaml.
func TestBadValuesAreRefusedWithAMessageNamingThem(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		want         []string // each must appear in the error
	}{
		{"unknown top-level key", "agnet: {}\n", []string{"agnet"}},
		{"unknown nested key", "agent:\n  imag: {repository: x}\n", []string{"imag"}},
		{"misspelt flag value", "webhook:\n  confirmTimout: 1s\n", []string{"confirmTimout"}},
		{"unknown certificate mode", "certificates:\n  mode: vault\n", []string{"mode", "selfManaged"}},
		{"taint effect", "global:\n  taintEffect: NoEvict\n", []string{"taintEffect"}},
		{"namespace not a DNS label", "global:\n  namespace: Termgate_System\n", []string{"namespace"}},
		{"duration without unit", "agent:\n  preemptionNotice: 30\n", []string{"preemptionNotice"}},
		{"duration string without unit", "agent:\n  systemGrace: \"10\"\n", []string{"systemGrace"}},
		{"negative replicas", "webhook:\n  replicas: -1\n", []string{"replicas"}},
		{"eviction concurrency zero", "agent:\n  evictionConcurrency: 0\n", []string{"evictionConcurrency"}},
		{"failure policy", "webhook:\n  failurePolicy:\n    bind: Allow\n", []string{"bind"}},
		{"cloud", "agent:\n  cloud: oracle\n", []string{"cloud"}},
		{"CIDR", "networkPolicy:\n  controlPlaneCIDRs: [10.0.0.300/28]\n", []string{"controlPlaneCIDRs"}},
		{"CIDRs missing while the policy is on", "networkPolicy:\n  controlPlaneCIDRs: []\n", []string{"controlPlaneCIDRs"}},
		{"same namespace twice", "global:\n  agentNamespace: termgate\n", []string{"global.namespace and global.agentNamespace", "must differ"}},
		{"provided without its Secret", "certificates:\n  mode: provided\n", []string{"certificates.provided.secretName"}},
		{"provided values in another mode", "certificates:\n  provided:\n    secretName: mine\n", []string{"certificates.provided", "mode"}},
		{"a CA bundle that is no PEM", "certificates:\n  mode: provided\n  provided: {secretName: mine, caBundle: aGVsbG8=}\n", []string{"not the base64 of a PEM"}},
		{"issuerRef outside certManager", "certificates:\n  certManager:\n    issuerRef: {name: x, kind: Issuer}\n", []string{"issuerRef", "certManager"}},
		{"existing service account without a name", "agent:\n  serviceAccount: {create: false}\n", []string{"agent.serviceAccount.name"}},
		{"PDB that lets every replica go", "webhook:\n  replicas: 2\n  pdb: {maxUnavailable: 2}\n", []string{"webhook.pdb.maxUnavailable", "replicas"}},
		{"dashboard without the sidecar's label", "monitoring:\n  dashboard: {enabled: true, configMapLabels: {grafana_dashboard: null}}\n", []string{"configMapLabels"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := tc.values
			if !strings.Contains(doc, "controlPlaneCIDRs") {
				doc += required
			}
			_, err := renderChart(t, values(t, doc))
			if err == nil {
				t.Fatalf("values accepted:\n%s", doc)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not name %q:\n%v", w, err)
				}
			}
		})
	}
}

// The refusals above must come from the values, not from a chart that
// renders nothing: the same documents with the bad line fixed render.
func TestTheRequiredValueIsTheOnlyOne(t *testing.T) {
	if _, err := renderChart(t, values(t, required)); err != nil {
		t.Fatalf("the smallest install fails: %v", err)
	}
	_, err := renderChart(t, nil)
	if err == nil || !strings.Contains(err.Error(), "controlPlaneCIDRs") {
		t.Fatalf("no values: want a refusal naming networkPolicy.controlPlaneCIDRs, got %v", err)
	}
	if _, err := renderChart(t, values(t, "networkPolicy:\n  enabled: false\n")); err != nil {
		t.Fatalf("the policy off needs no CIDRs: %v", err)
	}
}
