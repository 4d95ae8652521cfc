"""Interactive segmentation: the CVPR 2025 interactive challenge's protocol (simulated box and clicks,
:mod:`autosam.interactive.clicks`, :mod:`autosam.interactive.protocol`), its metrics
(:mod:`autosam.interactive.metrics`), the evaluator behind ``autosam_evaluate_interactive``
(:mod:`autosam.interactive.evaluator`) and the session object for viewers
(:mod:`autosam.interactive.session`). See documentation/interactive.md."""
