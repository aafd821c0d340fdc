package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/internal/fsutil"
)

// nodeFile is what a node remembers of its first start, in node.json: its
// id and the cluster map it bootstrapped with. The live map is stored
// through Raft; this seed serves until a group has applied it.
type nodeFile struct {
	ID  string   `json:"id"`
	Map *kvd.Map `json:"map"`
	// Cluster is the cluster id (kvd.ClusterID of Map and the initial
	// cluster's token); empty in files written before it existed, which
	// then use the map's with no token.
	Cluster string `json:"cluster,omitempty"`
	// Joined marks a node that joined a running cluster (--join): Map is
	// the map it joined, and it bootstraps nothing.
	Joined bool `json:"joined,omitempty"`
	// Latest is the newest map this node has learned, so that a node
	// that holds no replica of the groups that stored it still starts
	// from it.
	Latest *kvd.Map `json:"latest,omitempty"`
}

func readNodeFile(dir string) (*nodeFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node file: %w", err)
	}
	var nf nodeFile
	if err := json.Unmarshal(b, &nf); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, "node.json"), err)
	}
	if nf.Map == nil || nf.ID == "" {
		return nil, fmt.Errorf("%s is incomplete", filepath.Join(dir, "node.json"))
	}
	return &nf, nil
}

// writeNodeFile writes node.json atomically: temporary file, fsync,
// rename, directory fsync.
func writeNodeFile(dir string, nf *nodeFile) error {
	b, err := json.MarshalIndent(nf, "", "  ")
	if err != nil {
		return err
	}
	if err := fsutil.WriteFile(filepath.Join(dir, "node.json"), b, 0o644); err != nil {
		return fmt.Errorf("write node file: %w", err)
	}
	return nil
}
