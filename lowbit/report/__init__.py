"""``lowbit report``'s parts, one job a file (the verb itself is lowbit/report_cli.py)::

    data.py       what a report shows: Linear, Site (per-channel ranges, outliers), SizeRow,
                  Lowering, Report (and report.json)
    fx_layers.py  the linears of a quantized FX graph and their formats
    onnx_layers.py  the same for a QDQ ONNX file
    ranges.py     per-channel activation ranges: float-model hooks (and the merge both use)
    sizes.py      bytes by component, float vs quantized
    lowering.py   compile with lowbit.compile, read which linear got which kernel and why not
    from_hf.py    a Hugging Face folder -> Report (quantized as lowbit quantize does)
    from_onnx.py  a QDQ ONNX file -> Report
    plots.py      the PNGs (matplotlib, Agg)
    page.py       the HTML page
"""
