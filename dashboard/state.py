"""App state in the URL: widgets take their first value from the query string and write their
current value back, so a copied link reopens the same view.
"""

from __future__ import annotations

import math

import streamlit as st


def init(key: str, default, *, cast=str, options=None, multi: bool = False, bounds=None):
    """Give widget ``key`` its value from the URL (once per session), else ``default``; values
    not among ``options``, non-finite numbers and numbers outside ``bounds`` (lo, hi; None for
    open) fall back to the default. Returns the key, for the widget."""
    def number_ok(v):
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if bounds is not None and isinstance(v, (int, float)):
            lo, hi = bounds
            return (lo is None or v >= lo) and (hi is None or v <= hi)
        return True

    in_options = (lambda v: True) if options is None else (
        (lambda v: all(x in options for x in v)) if multi else (lambda v: v in options))
    valid = (lambda v: in_options(v) and (all(number_ok(x) for x in v) if multi else number_ok(v)))
    if key not in st.session_state:
        value = default
        raw = st.query_params.get(key)
        if raw is not None:
            try:
                value = [cast(x) for x in raw.split(",") if x] if multi else cast(raw)
            except (TypeError, ValueError):
                value = default
            if not valid(value):
                value = default
        st.session_state[key] = value
    elif not valid(st.session_state[key]):
        st.session_state[key] = default
    return key


def forget_when_changed(key: str, context) -> None:
    """Drop widget ``key``'s value (session and URL) when ``context`` differs from the last run's, so
    a choice made for another context (another sweep, metric, layer) never lingers; the first run of
    a session keeps what the URL says."""
    ss, ck = st.session_state, f"_ctx_{key}"
    if ck in ss and ss[ck] != context:
        ss.pop(key, None)
        if key in st.query_params:
            del st.query_params[key]
    ss[ck] = context


def sync(*keys: str) -> None:
    """Write these widgets' values into the URL."""
    for k in keys:
        if k not in st.session_state:
            continue
        v = st.session_state[k]
        text = ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
        if st.query_params.get(k) != text:
            st.query_params[k] = text
