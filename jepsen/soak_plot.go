package jepsen

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// nodeColors are the colors of nodes' lines, in order.
var nodeColors = []color.Color{
	color.NRGBA{R: 30, G: 110, B: 200, A: 255},
	color.NRGBA{R: 220, G: 120, B: 0, A: 255},
	color.NRGBA{R: 40, G: 160, B: 60, A: 255},
	color.NRGBA{R: 180, G: 40, B: 160, A: 255},
	color.NRGBA{R: 120, G: 120, B: 120, A: 255},
}

// plotResource draws one resource over time, a line per node broken
// where its process restarted or a figure is missing, over shaded fault
// windows, with the means of the judged quarters dashed.
func plotResource(path string, r Resource, samples []ResourceSample, faults []Fault, j *ResourceJudgement) error {
	p := plot.New()
	p.Title.Text = r.Title
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = r.Name
	if r.Unit != "" {
		p.Y.Label.Text += " (" + r.Unit + ")"
	}
	series, nodes, maxY, maxT := resourceSeries(r, samples)
	if len(nodes) == 0 {
		return nil
	}
	if err := shadeFaults(p, faults, 0, maxY*1.05, 45); err != nil {
		return err
	}
	for i, n := range nodes {
		col := nodeColors[i%len(nodeColors)]
		if err := plotNodeSeries(p, r, n, series[n], col); err != nil {
			return err
		}
		if err := plotQuarterMeans(p, r, n, j, col); err != nil {
			return err
		}
	}
	p.X.Min, p.X.Max = 0, maxT
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	if r.Bound != nil {
		p.Title.Text += fmt.Sprintf(" — %s (dashed: means of the 2nd and 4th quarters)", resourceVerdict(r, j))
	}
	return p.Save(12*vg.Inch, 4.5*vg.Inch, path)
}

// resourcePoint is one node's figure for a resource at time t, from
// process pid; v is NaN where the figure is missing.
type resourcePoint struct {
	t, v float64
	pid  int
}

// resourceSeries returns r's figures by node, the nodes in the order they
// first had one, the largest figure and the last time sampled (both at
// least 1).
func resourceSeries(r Resource, samples []ResourceSample) (series map[string][]resourcePoint, nodes []string, maxY, maxT float64) {
	series = map[string][]resourcePoint{}
	maxY, maxT = 1.0, 1.0
	for _, s := range samples {
		x, ok := s.Values[r.Name]
		maxT = max(maxT, s.T)
		if !ok {
			if _, in := series[s.Node]; in {
				series[s.Node] = append(series[s.Node], resourcePoint{t: s.T, v: math.NaN()})
			}
			continue
		}
		if _, in := series[s.Node]; !in {
			nodes = append(nodes, s.Node)
		}
		series[s.Node] = append(series[s.Node], resourcePoint{s.T, x, s.Pid})
		maxY = max(maxY, x)
	}
	return series, nodes, maxY, maxT
}

// shadeFaults shades each fault window from y0 to y1.
func shadeFaults(p *plot.Plot, faults []Fault, y0, y1 float64, alpha uint8) error {
	for _, f := range faults {
		poly, err := plotter.NewPolygon(plotter.XYs{{X: f.Start, Y: y0}, {X: f.End, Y: y0}, {X: f.End, Y: y1}, {X: f.Start, Y: y1}})
		if err != nil {
			return err
		}
		poly.Color = color.NRGBA{R: 255, G: 120, B: 60, A: alpha}
		poly.LineStyle.Width = 0
		p.Add(poly)
	}
	return nil
}

// plotNodeSeries draws node n's points of resource r as a line in col,
// broken where a figure is missing and, for a process resource, where
// the process restarted.
func plotNodeSeries(p *plot.Plot, r Resource, n string, points []resourcePoint, col color.Color) error {
	var seg plotter.XYs
	pid := -1
	first := true
	flush := func() error {
		if len(seg) == 0 {
			return nil
		}
		l, s, err := plotter.NewLinePoints(seg)
		if err != nil {
			return err
		}
		l.Color, s.Color = col, col
		l.Width = vg.Points(1.2)
		s.Radius = vg.Points(1.5)
		p.Add(l, s)
		if first {
			p.Legend.Add(n, l)
			first = false
		}
		seg = nil
		return nil
	}
	for _, pt := range points {
		// A process series breaks at a restart; a disk series
		// continues across it.
		if math.IsNaN(pt.v) || (r.Scope == ScopeProcess && pt.pid != pid) {
			if err := flush(); err != nil {
				return err
			}
		}
		if math.IsNaN(pt.v) {
			continue
		}
		pid = pt.pid
		seg = append(seg, plotter.XY{X: pt.t, Y: pt.v})
	}
	return flush()
}

// plotQuarterMeans draws, dashed in col, the means of the second and the
// last quarter of node n's series of r, if it was judged.
func plotQuarterMeans(p *plot.Plot, r Resource, n string, j *ResourceJudgement, col color.Color) error {
	for _, f := range j.Series {
		if f.Resource != r.Name || f.Node != n || !f.Judged {
			continue
		}
		for _, q := range []struct{ from, to, y float64 }{{j.Seconds / 4, j.Seconds / 2, f.Q2}, {3 * j.Seconds / 4, j.Seconds, f.Q4}} {
			l, err := plotter.NewLine(plotter.XYs{{X: q.from, Y: q.y}, {X: q.to, Y: q.y}})
			if err != nil {
				return err
			}
			l.Color = col
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(l)
		}
	}
	return nil
}

// resourceVerdict says whether r was judged bounded on every node.
func resourceVerdict(r Resource, j *ResourceJudgement) string {
	verdict := "not judged"
	for _, f := range j.Series {
		if f.Resource == r.Name && f.Judged {
			verdict = "bounded"
			if f.Unbounded {
				verdict = "UNBOUNDED on " + f.Node
				break
			}
		}
	}
	return verdict
}
