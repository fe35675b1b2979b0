package selfmanaged

import (
	"bytes"
	"encoding/pem"
	"time"
)

// mergeBundle returns current first, then every certificate of old that is
// a different, still valid CA. Expired CAs drop out on their own.
func mergeBundle(current, old []byte, now time.Time) []byte {
	out := bytes.Clone(current)
	curBlock, _ := pem.Decode(current)
	olds, err := parseCerts(old)
	if err != nil {
		return out
	}
	for _, c := range olds {
		if curBlock != nil && bytes.Equal(c.Raw, curBlock.Bytes) {
			continue
		}
		if !c.IsCA || now.After(c.NotAfter) {
			continue
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: c.Raw})...)
	}
	return out
}
