"""How a report is shown: report.md, report.html and its PNG plots, from report.json.

    tables      the report's tables as headers and text cells (shared by markdown and html)
    markdown    report.md
    html        report.html with the plots embedded
    plots       accuracy vs latency with the Pareto front, and the other PNGs

matplotlib loads inside the plotting functions only.
"""
