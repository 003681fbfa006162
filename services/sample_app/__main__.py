"""`python -m services.sample_app` runs the sample service."""

from services.sample_app.app import main

main()
