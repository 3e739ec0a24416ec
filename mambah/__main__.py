from mambah.cli import main

raise SystemExit(main())
