package jepsen

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// driver runs the clients and the faults of one run.
type driver struct {
	o   Options
	env *Env
	nem Nemesis // nil: no faults

	// runCtx ends at o.Duration; stopClients stops the clients.
	runCtx      context.Context
	stopClients context.CancelFunc
	// ownHold is set while a fault starts, and while one with a hold of
	// its own is on: the clients are not stopped meanwhile.
	ownHold atomic.Bool
	// done counts the operations the clients completed.
	done atomic.Int64
}

// drive runs the clients for o.Duration, and on until a fault that holds
// for a time of its own heals (see Holder), with the nemesis's faults one
// at a time meanwhile. It returns the fault windows once every client has
// stopped.
func (d *driver) drive(ctx context.Context) []Fault {
	clientsCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	runCtx, stopRun := context.WithTimeout(ctx, d.o.Duration)
	defer stopRun()
	d.runCtx, d.stopClients = runCtx, stopClients
	stopAtDeadline := context.AfterFunc(runCtx, func() {
		if !d.ownHold.Load() {
			stopClients()
		}
	})
	defer stopAtDeadline()
	wg := d.startClients(ctx, clientsCtx)
	var faults []Fault
	if d.nem != nil {
		faults = d.faults(ctx)
	} else {
		<-runCtx.Done()
	}
	stopClients()
	wg.Wait()
	return faults
}

// startClients starts o.Workers clients, each taking steps of the
// workload until clientsCtx ends, and recording them in the history.
func (d *driver) startClients(ctx, clientsCtx context.Context) *sync.WaitGroup {
	o, env, h := d.o, d.env, d.env.History
	var wg sync.WaitGroup
	for id := range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &Worker{ID: id, Rng: rand.New(rand.NewPCG(o.Seed, uint64(id)+1))}
			for clientsCtx.Err() == nil {
				call := h.Now()
				op := o.Workload.Step(ctx, env, w)
				op.Call, op.Return = call, h.Now()
				h.Add(op)
				d.done.Add(1)
				select {
				case <-time.After(o.Think):
				case <-clientsCtx.Done():
				}
			}
		}()
	}
	return &wg
}

// faults injects faults one at a time, each after o.Quiet, none begun
// after o.Duration, and returns their windows.
func (d *driver) faults(ctx context.Context) []Fault {
	rng := rand.New(rand.NewPCG(d.o.Seed, 0))
	var out []Fault
	for {
		select {
		case <-time.After(d.o.Quiet):
		case <-d.runCtx.Done():
		}
		if d.runCtx.Err() != nil {
			return out
		}
		f, healed := d.fault(ctx, rng)
		out = append(out, f)
		if healed != "" {
			d.o.Logf("  %5.1fs  healed: %s (%d ops so far)", f.End, healed, d.done.Load())
		} else {
			d.o.Logf("  %5.1fs  healed (%d ops so far)", f.End, d.done.Load())
		}
	}
}

// fault injects one fault, holds it and heals it. It returns the fault's
// window and what healing it found.
func (d *driver) fault(ctx context.Context, rng *rand.Rand) (Fault, string) {
	o, nem, h := d.o, d.nem, d.env.History
	f := Fault{Nemesis: nem.Name(), Start: sec(h.Now())}
	d.ownHold.Store(true) // until its hold is known
	// Not runCtx: a fault begun is set up in full (Start bounds its own
	// waits), even if o.Duration ends meanwhile.
	what, err := nem.Start(ctx, d.env, rng)
	f.What = what
	if err != nil {
		f.Error = err.Error()
	}
	o.Logf("  %5.1fs  fault: %s", f.Start, what)
	var own time.Duration
	if hn, ok := nem.(Holder); ok {
		own = hn.Hold(o.Hold)
	}
	hold, holdCtx := o.Hold, d.runCtx
	if own > 0 {
		// Held in full: the clients run on past o.Duration.
		hold, holdCtx = own, ctx
	} else {
		d.ownHold.Store(false)
		if d.runCtx.Err() != nil {
			d.stopClients()
		}
	}
	select {
	case <-time.After(hold):
	case <-holdCtx.Done():
	}
	healed, err := nem.Stop(ctx, d.env)
	if healed != "" {
		f.What += "; " + healed
	}
	if err != nil && f.Error == "" {
		f.Error = "heal: " + err.Error()
	}
	if d.ownHold.Swap(false) && d.runCtx.Err() != nil {
		d.stopClients()
	}
	f.End = sec(h.Now())
	return f, healed
}
