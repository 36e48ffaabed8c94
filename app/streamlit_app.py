"""lbsearch's web UI: `streamlit run app/streamlit_app.py` (or `$LBSEARCH_INDEX`, or `lbsearch ui`).

Pages: Search (text), Query by example (a file, uploaded or in the library), Library (models, adding folders,
counts, failures, index health). Everything they do goes through `lbsearch.library.Library`.
"""

import streamlit as st

from lbsearch.app import state

st.set_page_config(page_title="lbsearch", page_icon=":material/search:", layout="wide")
page = st.navigation(
    [
        st.Page(state.SEARCH_PAGE, title="Search", icon=":material/search:", default=True),
        st.Page(state.EXAMPLE_PAGE, title="Query by example", icon=":material/image_search:", url_path="example"),
        st.Page(state.LIBRARY_PAGE, title="Library", icon=":material/video_library:", url_path="library"),
    ]
)
st.sidebar.caption(f"Library: `{state.index_location()}`")
page.run()
