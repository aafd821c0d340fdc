package jepsen

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"os"
)

// writeAnomalies writes the list-append checker's anomalies as an HTML
// page: each one in words, and each cycle drawn as a picture (its
// transactions on a circle, each edge an arrow labelled with its kind).
func writeAnomalies(path string, g *laGraph, anomalies []Anomaly) error {
	var b bytes.Buffer
	b.WriteString(`<!doctype html><html><head><meta charset="utf-8"><title>list-append anomalies</title>
<style>body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em}
li{margin:.3em 0}.kind{font-weight:bold}code{font-size:90%}svg{border:1px solid #ddd;margin:.5em 0}</style></head><body>
`)
	fmt.Fprintf(&b, "<h1>list-append: %d anomalies</h1>\n", len(anomalies))
	for i, a := range anomalies {
		fmt.Fprintf(&b, "<h2 id=\"a%d\"><span class=\"kind\">%s</span></h2>\n", i, html.EscapeString(a.Kind))
		if len(a.Cycle) == 0 || len(a.Steps) == 0 {
			fmt.Fprintf(&b, "<p>%s</p>\n", html.EscapeString(a.Text))
			continue
		}
		fmt.Fprintf(&b, "<p>%s</p>\n<p>Let:</p><ul>\n", html.EscapeString(describeKind(a.Kind)))
		for _, idx := range a.Cycle {
			for _, t := range g.txns {
				if t.op.Index == idx {
					fmt.Fprintf(&b, "<li><code>%s</code></li>\n", html.EscapeString(t.describe()))
				}
			}
		}
		b.WriteString("</ul><p>Then:</p><ul>\n")
		for _, s := range a.Steps {
			fmt.Fprintf(&b, "<li>%s</li>\n", html.EscapeString(s))
		}
		b.WriteString("</ul>\n")
		b.WriteString(cycleSVG(a))
	}
	b.WriteString("</body></html>\n")
	return os.WriteFile(path, b.Bytes(), 0o644)
}

var edgeColors = map[string]string{"ww": "#c0392b", "wr": "#2471a3", "rw": "#d68910", "rt": "#7d3c98"}

// cycleSVG draws a cycle: transactions on a circle, arrows between them.
func cycleSVG(a Anomaly) string {
	n := len(a.Cycle)
	const size, r, nodeR = 360.0, 120.0, 26.0
	cx, cy := size/2, size/2
	pos := func(i int) (float64, float64) {
		ang := -math.Pi/2 + 2*math.Pi*float64(i)/float64(n)
		return cx + r*math.Cos(ang), cy + r*math.Sin(ang)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f">`, size, size, size, size)
	b.WriteString(`<defs>`)
	for k, c := range edgeColors {
		fmt.Fprintf(&b, `<marker id="arrow-%s" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="%s"/></marker>`, k, c)
	}
	b.WriteString(`</defs>`)
	for i := range n {
		x1, y1 := pos(i)
		x2, y2 := pos((i + 1) % n)
		kind := ""
		if i < len(a.edgeKinds) {
			kind = a.edgeKinds[i]
		}
		color := edgeColors[kind]
		if color == "" {
			color = "#555"
		}
		// Bend each arrow outwards a little so a two-node cycle shows
		// two arrows; stop it at the node's rim.
		dx, dy := x2-x1, y2-y1
		d := math.Hypot(dx, dy)
		ux, uy := dx/d, dy/d
		sx, sy := x1+ux*nodeR, y1+uy*nodeR
		ex, ey := x2-ux*nodeR, y2-uy*nodeR
		mx, my := (sx+ex)/2, (sy+ey)/2
		bend := 30.0
		qx, qy := mx+uy*bend, my-ux*bend
		fmt.Fprintf(&b, `<path d="M%.1f,%.1f Q%.1f,%.1f %.1f,%.1f" fill="none" stroke="%s" stroke-width="2" marker-end="url(#arrow-%s)"/>`,
			sx, sy, qx, qy, ex, ey, color, kind)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="13" fill="%s" text-anchor="middle">%s</text>`, qx, qy, color, html.EscapeString(kind))
	}
	for i, idx := range a.Cycle {
		x, y := pos(i)
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="%.0f" fill="#fdfefe" stroke="#333"/>`, x, y, nodeR)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="12" text-anchor="middle" dominant-baseline="middle">T%d</text>`, x, y, idx)
	}
	b.WriteString(`</svg>`)
	return b.String()
}
