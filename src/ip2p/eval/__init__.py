"""``ip2p eval``: InstructPix2Pix's CLIP metrics, MagicBrush's metrics, sweeps and baselines.

* :mod:`ip2p.eval.data`: test sets (the trainer's formats and MagicBrush's sessions of turns);
* :mod:`ip2p.eval.metrics`: the metrics and the CLIP / DINO / FID models behind them;
* :mod:`ip2p.eval.baselines`: the methods compared (InstructPix2Pix models, SDEdit, identity);
* :mod:`ip2p.eval.run`: running every method on every turn, resumably;
* :mod:`ip2p.eval.report` and :mod:`ip2p.eval.sweep`: the comparison table and the trade-off plot.

Edits go through :class:`ip2p.editor.Editor` (or diffusers' img2img pipeline for SDEdit); nothing
here samples on its own. See docs/evaluation.md.
"""
