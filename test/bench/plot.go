package main

import (
	"errors"
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// plotWindow is the span each throughput point averages over.
const plotWindow = 0.1 // seconds

// plotInsert draws the sluice insert run: rows written per second (over
// plotWindow) with the ceiling for reference, and the gate's use of its
// record and byte budgets, against seconds since the process started.
func plotInsert(path string, r *results) error {
	s := r.insert
	if s == nil || len(s.series) < 3 {
		return errors.New("no /status samples of the insert run")
	}
	maxRec, maxBytes := float64(s.status.Buffer.MaxRecords), float64(s.status.Buffer.MaxBytes)
	if maxRec <= 0 || maxBytes <= 0 {
		return errors.New("the insert run's /status gave no buffer budget")
	}

	var thr, recs, byts plotter.XYs
	j := 0
	for i, a := range s.series {
		recs = append(recs, plotter.XY{X: a.at.Seconds(), Y: 100 * float64(a.records) / maxRec})
		byts = append(byts, plotter.XY{X: a.at.Seconds(), Y: 100 * float64(a.bytes) / maxBytes})
		for j < i && a.at.Seconds()-s.series[j].at.Seconds() > plotWindow {
			j++
		}
		if j > 0 {
			b := s.series[j-1]
			if dt := a.at.Seconds() - b.at.Seconds(); dt > 0 {
				thr = append(thr, plotter.XY{X: (a.at.Seconds() + b.at.Seconds()) / 2, Y: float64(a.written-b.written) / dt / 1000})
			}
		}
	}

	top := plot.New()
	top.Title.Text = fmt.Sprintf("sluice insert, %s records, %d lanes: rows written per second (%.0f ms windows)",
		thousands(float64(r.opts.records)), r.opts.lanes, plotWindow*1000)
	top.Y.Label.Text = "thousand rows/s"
	top.Y.Min = 0
	top.Add(plotter.NewGrid())
	line, err := plotter.NewLine(thr)
	if err != nil {
		return err
	}
	line.Color = color.RGBA{B: 200, A: 255}
	line.Width = vg.Points(1.5)
	top.Add(line)
	top.Legend.Add("sluice", line)
	ceil := r.ceilingRate() / 1000
	ref, err := plotter.NewLine(plotter.XYs{{X: 0, Y: ceil}, {X: s.elapsed.Seconds(), Y: ceil}})
	if err != nil {
		return err
	}
	ref.Color = color.RGBA{R: 200, A: 255}
	ref.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	top.Add(ref)
	top.Legend.Add("raw COPY ceiling", ref)
	top.Legend.Top = true

	bottom := plot.New()
	bottom.Title.Text = "flow gate: buffered records and bytes, % of flow.max_buffered_records / _bytes"
	bottom.X.Label.Text = "seconds since sluice started"
	bottom.Y.Label.Text = "% of budget"
	bottom.Y.Min, bottom.Y.Max = 0, 100
	bottom.Add(plotter.NewGrid())
	lr, err := plotter.NewLine(recs)
	if err != nil {
		return err
	}
	lr.Color = color.RGBA{G: 140, A: 255}
	lb, err := plotter.NewLine(byts)
	if err != nil {
		return err
	}
	lb.Color = color.RGBA{R: 220, G: 120, A: 255}
	bottom.Add(lr, lb)
	bottom.Legend.Add(fmt.Sprintf("records (of %s)", thousands(maxRec)), lr)
	bottom.Legend.Add(fmt.Sprintf("bytes (of %s)", mib(int64(maxBytes))), lb)
	bottom.Legend.Top = true
	for _, p := range []*plot.Plot{top, bottom} {
		p.X.Min, p.X.Max = 0, s.elapsed.Seconds()
	}

	img := vgimg.New(vg.Points(720), vg.Points(540))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(10)}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
