package jepsen

import (
	"fmt"
	"sort"
)

// workloads are the workloads by name. Each call returns a fresh one.
var workloads = map[string]func() Workload{
	"register":    func() Workload { return &RegisterWorkload{} },
	"set":         func() Workload { return &SetWorkload{} },
	"stale":       func() Workload { return &StaleWorkload{} },
	"bank":        func() Workload { return &BankWorkload{} },
	"list-append": func() Workload { return &ListAppendWorkload{} },
}

// Every workload names its keys, so that each can run on a secure
// cluster.
var (
	_ KeySpace = (*RegisterWorkload)(nil)
	_ KeySpace = (*SetWorkload)(nil)
	_ KeySpace = (*StaleWorkload)(nil)
	_ KeySpace = (*BankWorkload)(nil)
	_ KeySpace = (*ListAppendWorkload)(nil)
	_ KeySpace = (*SoakWorkload)(nil)
)

// WorkloadByName returns a fresh workload.
func WorkloadByName(name string) (Workload, error) {
	f, ok := workloads[name]
	if !ok {
		return nil, fmt.Errorf("unknown workload %q (%v)", name, WorkloadNames())
	}
	return f(), nil
}

// WorkloadNames lists the workloads.
func WorkloadNames() []string {
	var names []string
	for n := range workloads {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
