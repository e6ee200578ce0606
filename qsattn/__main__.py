from qsattn.cli import main

raise SystemExit(main())
