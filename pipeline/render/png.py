"""A matplotlib figure as PNG bytes, closed afterwards: how every picture of the report is made."""
from __future__ import annotations

import io


def png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
