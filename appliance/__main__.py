"""`python -m appliance` is `vc-appliance`."""

from appliance.cli import main

raise SystemExit(main())
