"""attnlens dashboard: page configuration and navigation only (views live in dashboard/views).

    attnlens dashboard --root DIR        # or: streamlit run streamlit_app.py -- --root DIR
"""

import streamlit as st

from dashboard import auth
from dashboard.views import common, compare, layer_step, maps, notes_view, perturbation, proportions, runs, selection

st.set_page_config(page_title="attnlens", page_icon="🔍", layout="wide")
if not auth.gate():  # served beyond this machine: nothing is shown before the access token
    st.stop()

PAGES = [
    st.Page(runs.render, title="Runs", url_path="runs", default=True),
    st.Page(layer_step.render, title="Layer × step", url_path="layer-step"),
    st.Page(proportions.render, title="Proportions", url_path="proportions"),
    st.Page(maps.render, title="Attention maps", url_path="maps"),
    st.Page(compare.render, title="Compare", url_path="compare"),
    st.Page(perturbation.render, title="Perturbation study", url_path="perturbation"),
    st.Page(selection.render, title="Layer selection", url_path="selection"),
    st.Page(notes_view.render, title="Notes", url_path="notes"),
]

page = st.navigation(PAGES)
with common.render_timer(page.url_path or "runs"):
    common.sidebar()
    page.run()
