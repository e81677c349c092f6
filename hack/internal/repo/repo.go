// Package repo locates the repository for the tools under hack/, which run with `go run`
// from any folder inside it and need its files (config/, bin/).
package repo

import (
	"errors"
	"os"
	"path/filepath"
)

// Root walks up from the working directory to the folder holding go.mod.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run this inside the repository")
		}
		dir = parent
	}
}
