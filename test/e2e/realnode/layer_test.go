package realnode_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
)

// layerContents adds the regular files of a gzipped layer tar to files, by
// absolute path.
func layerContents(layer []byte, files map[string][]byte) error {
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("layer: %s: %w", h.Name, err)
			}
			files["/"+h.Name] = b
		}
	}
}
