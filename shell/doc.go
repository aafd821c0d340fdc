// Package shell is kvcli's command interpreter: the commands, their
// output (plain for people, JSON for scripts), their exit codes, and the
// interactive shell with history and completion. It talks to the cluster
// only through the Go client.
package shell
