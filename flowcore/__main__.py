from flowcore.cli import main

raise SystemExit(main())
