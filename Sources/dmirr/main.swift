print("dmirr")
