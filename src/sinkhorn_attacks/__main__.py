from sinkhorn_attacks.cli import main

raise SystemExit(main())
