// Package embed runs kvd in-process: a single-node store on a data
// directory, with no network listener unless asked for, behind the same
// kvd.KV interface, semantics and errors as the Go client of a cluster.
// Functions and tests can run against it and move to a cluster without
// changing their code.
//
//	kv, err := embed.Open("data", embed.Options{})
//	defer kv.Close()
//	kv.Put(ctx, "k", []byte("v"), kvd.WithTTL(time.Minute))
package embed

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
	"github.com/kvd-project/kvd/backup"
	"github.com/kvd-project/kvd/internal/atrest"
	"github.com/kvd-project/kvd/server"
)

// Options configure an embedded store.
type Options struct {
	// HTTPAddr, if set, also serves the HTTP API there (the store then
	// answers kvcli and curl too), through Frontend, which must be set
	// then: node.HTTP is kvd's. The embedded store alone does not link
	// the HTTP API in.
	HTTPAddr string
	Frontend server.FrontendFunc
	// Logger receives the store's logs (default: discarded).
	Logger *slog.Logger
	// TTLInterval is the precision of TTLs (default 100ms).
	TTLInterval time.Duration
	// TLSCertFile and TLSKeyFile make HTTPAddr serve HTTPS; with
	// TLSClientCAFile, only to clients with a certificate that CA signed.
	TLSCertFile, TLSKeyFile, TLSClientCAFile string
	// Auth makes requests to HTTPAddr carry a token (see
	// docs/security.md); RootTokenFile holds the admin token (default
	// dir/root.token). Calls made in process through the Store are the
	// program's own, and need none.
	Auth          bool
	RootTokenFile string
	// EncryptionKeyFile, if set, encrypts the values, log entries,
	// snapshots and backups the store writes (AES-256-GCM) under the keys
	// of this file: 32 random bytes in base64 a line, the first active,
	// mode 0600 ("kvd rotate-key --encryption-key-file" makes one). The
	// file is read again when it changes.
	EncryptionKeyFile string
}

// Store is an embedded store. It implements kvd.KV.
type Store struct {
	kvd.KV
	s *server.Server
}

var _ kvd.KV = (*Store)(nil)

// Open opens (creating if needed) the store in dir and starts it; it
// returns once the store accepts requests. Restarting on the same
// directory keeps the data.
func Open(dir string, o Options) (*Store, error) {
	cfg := server.DefaultConfig()
	cfg.Embedded = true
	cfg.DataDir = dir
	cfg.HTTPAddr, cfg.Frontend = o.HTTPAddr, o.Frontend
	cfg.RaftAddr = ""
	cfg.Logger = o.Logger
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.TTLInterval > 0 {
		cfg.TTLInterval = o.TTLInterval
	}
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = o.TLSCertFile, o.TLSKeyFile, o.TLSClientCAFile
	cfg.Auth, cfg.RootTokenFile = o.Auth, o.RootTokenFile
	if o.EncryptionKeyFile != "" {
		keys, err := atrest.OpenKeys(o.EncryptionKeyFile)
		if err != nil {
			return nil, fmt.Errorf("open embedded store: %w", err)
		}
		cfg.Encryption = keys
	}
	// A single voter elects itself at once: no need to wait a heartbeat.
	cfg.Replication.HeartbeatTimeout = 100 * time.Millisecond
	cfg.Replication.ElectionTimeout = 100 * time.Millisecond
	cfg.Replication.LeaderLeaseTimeout = 100 * time.Millisecond
	cfg.LeaderBalanceInterval = 0
	s, err := server.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("open embedded store: %w", err)
	}
	if err := s.WaitReady(10 * time.Second); err != nil {
		s.Close()
		return nil, fmt.Errorf("open embedded store: %w", err)
	}
	return &Store{KV: s.KV(), s: s}, nil
}

// HTTPAddr returns the address of the HTTP API, "" if not served.
func (st *Store) HTTPAddr() string { return st.s.HTTPAddr() }

// Backup writes a backup of the store to w: every key with its value and
// absolute expiry deadline, at one consistent cut, in the format of
// package backup, the same as a cluster's. Restore here or in another
// store loads it, and so does a cluster ("kvcli restore"). It answers the
// backup's summary. After an error, w may hold part of a file, which the
// caller must discard. Writes go on while it runs; it answers
// kvd.ErrConflict while a restore runs.
func (st *Store) Backup(ctx context.Context, w io.Writer) (backup.Summary, error) {
	return st.s.Backup(ctx, func() io.Writer { return w })
}

// Restore loads the backup read from r (one written by Backup, or by a
// cluster's "kvcli backup") into the store, and answers what was loaded;
// keys whose TTL ran out since the backup are left out. A store that
// holds keys refuses it with kvd.ErrConflict unless force is set, which
// drops its keys first. A file that is damaged, cut short, of another
// format version or empty is refused with kvd.ErrInvalid, its message
// saying which, and nothing is changed.
func (st *Store) Restore(ctx context.Context, r io.Reader, force bool) (api.RestoreResult, error) {
	return st.s.Restore(ctx, r, force)
}

// Close stops the store and closes its files.
func (st *Store) Close() error { return st.s.Close() }
