"""attnlens dashboard: a Streamlit app over a trace root.

``data`` (queries), ``rules`` (recorded choices), ``figures`` (Plotly builders) and ``notes`` are
plain Python and unit-tested; ``views`` draw them; ``cache`` holds the Streamlit caching wrappers.
Nothing here imports torch.
"""
