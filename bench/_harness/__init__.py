"""What the bench scripts share: SIPp harness, /proc meter, run dirs, tape analysis, tables.

The scripts put the checkout on sys.path and import `bench._harness.<module>`, so they run from a
checkout without `pip install -e .`.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
