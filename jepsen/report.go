package jepsen

import (
	"cmp"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writeReport writes the run's folder: history.jsonl, summary.json, the
// checker's visualization and latency.png; it keeps the node logs.
func writeReport(dir string, sum *Summary, ops []Op, check CheckResult) error {
	if err := WriteJSONL(filepath.Join(dir, "history.jsonl"), ops); err != nil {
		return err
	}
	if err := check.writeVisualization(dir, "linearizability.html"); err != nil {
		return err
	}
	if err := plotLatency(filepath.Join(dir, "latency.png"), sum, ops); err != nil {
		return fmt.Errorf("latency plot: %w", err)
	}
	// Node logs live under cluster/; keep them beside the report.
	logs, _ := filepath.Glob(filepath.Join(dir, "cluster", "*.log"))
	for _, l := range logs {
		os.Rename(l, filepath.Join(dir, filepath.Base(l)))
	}
	return writeJSON(filepath.Join(dir, "summary.json"), sum)
}

// writeVisualization writes r's visualization, if it has one, into dir,
// in its VisualizationFile or else in def.
func (r CheckResult) writeVisualization(dir, def string) error {
	if r.Visualization == nil {
		return nil
	}
	if err := r.Visualization(filepath.Join(dir, cmp.Or(r.VisualizationFile, def))); err != nil {
		return fmt.Errorf("visualization: %w", err)
	}
	return nil
}

// writeJSON writes v to path as indented JSON.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// plotLatency draws each operation's latency against its start time,
// coloured by outcome, over shaded fault windows.
func plotLatency(path string, sum *Summary, ops []Op) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s under %s: latency (%s)", sum.Workload, sum.Nemesis, sum.Verdict)
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = "latency (ms)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}

	series := map[Status]plotter.XYs{}
	maxY := 1.0
	for _, op := range ops {
		if op.Process < 0 {
			continue
		}
		ms := max(float64(op.Return-op.Call)/1e6, 0.05)
		maxY = max(maxY, ms)
		series[op.Status] = append(series[op.Status], plotter.XY{X: float64(op.Call) / 1e9, Y: ms})
	}
	if err := shadeFaults(p, sum.Faults, 0.05, maxY*2, 50); err != nil {
		return err
	}
	colors := map[Status]color.Color{
		OK:      color.NRGBA{R: 30, G: 110, B: 200, A: 140},
		Fail:    color.NRGBA{R: 200, G: 30, B: 30, A: 200},
		Unknown: color.NRGBA{R: 230, G: 160, B: 0, A: 220},
	}
	for _, st := range []Status{OK, Fail, Unknown} {
		xys := series[st]
		if len(xys) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return err
		}
		sc.GlyphStyle.Color = colors[st]
		sc.GlyphStyle.Radius = vg.Points(1.2)
		sc.GlyphStyle.Shape = draw.CircleGlyph{}
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("%s (%d)", st, len(xys)), sc)
	}
	p.Legend.Top = true
	return p.Save(12*vg.Inch, 5*vg.Inch, path)
}
