package kit

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// ParseLeafPEM parses the first certificate of a PEM bundle: the leaf of a
// Secret's tls.crt, or the first CA of an injected caBundle.
func ParseLeafPEM(pemBytes []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block in the certificate data")
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("first PEM block is a %q, not a CERTIFICATE", block.Type)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}
