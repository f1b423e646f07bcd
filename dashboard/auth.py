"""Access control for a dashboard served beyond this machine: a token the launcher sets (the
user's ``--password`` or a generated one), checked before any data is shown.

Loopback-only servers (the default) need none. A client passes the token once, in the URL
(``?token=…``, as the launcher prints it) or in the form shown instead of the app; the session
then stays open. Must not import torch.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets

TOKEN_ENV = "ATTNLENS_DASHBOARD_TOKEN"
SESSION_KEY = "_attnlens_authenticated"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def token_for(host: str, password: str | None) -> tuple[str | None, bool]:
    """(token the server will require or None, whether it was generated here)."""
    token = password or os.environ.get(TOKEN_ENV) or None
    if token or is_loopback(host):
        return token, False
    return secrets.token_urlsafe(18), True


def gate() -> bool:
    """In the app, before anything else: True when no token is required or the session has shown
    it; otherwise draws only a token form and returns False (the caller stops)."""
    import streamlit as st

    expected = os.environ.get(TOKEN_ENV)
    if not expected or st.session_state.get(SESSION_KEY):
        return True
    given = st.query_params.get("token")
    if given and hmac.compare_digest(str(given), expected):
        st.session_state[SESSION_KEY] = True
        return True
    st.title("attnlens")
    st.write("This dashboard is shared beyond its machine and needs its access token.")
    with st.form("auth_form"):
        typed = st.text_input("access token", type="password", key="auth_token")
        if st.form_submit_button("Open", key="auth_submit"):
            if hmac.compare_digest(typed or "", expected):
                st.session_state[SESSION_KEY] = True
                st.rerun()
            st.error("wrong token")
    return False
