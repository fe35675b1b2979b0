// Package selfmanaged keeps the webhook's certificates without cert-manager:
// one replica (the leader) maintains a CA and a serving certificate in a
// Secret and injects the CA bundle into termgate's webhook configurations;
// every replica copies the serving pair from the Secret to its certificate
// directory, where certs.Reloader picks it up.
package selfmanaged

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// Secret keys. tls.crt/tls.key make it a valid kubernetes.io/tls Secret;
// ca.key lets the leader re-issue serving certificates from the same CA, so
// the injected bundle changes only when the CA itself rotates.
const (
	KeyCert   = "tls.crt"
	KeyKey    = "tls.key"
	KeyCA     = "ca.crt"
	KeyCAKey  = "ca.key"
	pemCert   = "CERTIFICATE"
	pemKey    = "EC PRIVATE KEY"
	clockSkew = 5 * time.Minute
)

// keyPair is a parsed certificate with its key.
type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// certPEM and keyPEM are the encoded forms stored in the Secret.
	certPEM, keyPEM []byte
}

// newCA makes a self-signed CA valid from now (less a little skew) for
// validity.
func newCA(now time.Time, validity time.Duration) (*keyPair, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "termgate-webhook-ca", Organization: []string{"termgate"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(tmpl, nil)
}

// newServing makes a serving certificate for hosts (DNS names or IPs) signed
// by ca.
func newServing(ca *keyPair, hosts []string, now time.Time, validity time.Duration) (*keyPair, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		// A leaf must not outlive its issuer.
		tmpl.NotAfter = ca.cert.NotAfter
	}
	return issue(tmpl, ca)
}

func issue(tmpl *x509.Certificate, parent *keyPair) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	tmpl.SerialNumber = serial
	parentCert, signer := tmpl, key
	if parent != nil {
		parentCert, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return &keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: pemKey, Bytes: keyDER}),
	}, nil
}

// parseKeyPair reads a PEM certificate and EC key written by issue.
func parseKeyPair(certPEM, keyPEM []byte) (*keyPair, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("no PEM key")
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	if !key.PublicKey.Equal(certs[0].PublicKey) {
		return nil, errors.New("key does not match certificate")
	}
	// Keep only the first certificate: a CA bundle holds older CAs after it.
	first := pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: certs[0].Raw})
	return &keyPair{cert: certs[0], key: key, certPEM: first, keyPEM: keyPEM}, nil
}

// parseCerts reads every certificate in a PEM bundle.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != pemCert {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// coversHosts reports whether cert names exactly hosts (in any order).
func coversHosts(cert *x509.Certificate, hosts []string) bool {
	var have []string
	have = append(have, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		have = append(have, ip.String())
	}
	want := slices.Clone(hosts)
	for i, h := range want {
		if ip := net.ParseIP(h); ip != nil {
			want[i] = ip.String()
		}
	}
	slices.Sort(have)
	slices.Sort(want)
	return slices.Equal(have, want)
}

// PEMs is a CA with a serving pair it signed, PEM-encoded.
type PEMs struct {
	CA, Cert, Key []byte
}

// Issue creates a fresh CA and a serving pair for hosts, valid from now. The
// webhook itself keeps these in a Secret (see Rotator); Issue serves local
// runs, tests and the load generator, which serve from files.
func Issue(hosts []string, now time.Time, validity time.Duration) (PEMs, error) {
	if len(hosts) == 0 {
		return PEMs{}, errors.New("issue: no hosts")
	}
	ca, err := newCA(now, validity)
	if err != nil {
		return PEMs{}, err
	}
	s, err := newServing(ca, hosts, now, validity)
	if err != nil {
		return PEMs{}, err
	}
	return PEMs{CA: ca.certPEM, Cert: s.certPEM, Key: s.keyPEM}, nil
}
