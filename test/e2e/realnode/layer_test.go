package realnode_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
)

// layerFiles lists the regular files of a gzipped layer, as absolute paths.
func layerFiles(layer []byte) ([]string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	var files []string
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			files = append(files, "/"+h.Name)
		}
	}
}
